// The CUDA backend's layer-by-layer path against the CPU backend on architectures other than the reference one:
// convolutions with padding and stride, max-pools with overlapping, padded and strided-past windows, average pools,
// a pool as the first layer. Per architecture: predict, input gradients for every loss, the network's whole backward
// pass (logits, dx, every parameter gradient), an image in a batch against the same image alone, and the fused
// path's refusal (its kernel is the reference architecture's alone). Plus, in every CUDA build (GPU or not), fused_path_supports()
// on spellings of the reference architecture and on near misses.
//
// The pattern and the bounds are tests/test_cuda_parity_backend.cpp's: inputs drawn away from decision boundaries
// (clean_images, which follows each layer's Window), tolerances relative to each tensor's scale, ~10x the error of
// compounding per-layer FP32 reordering (~1e-6 of scale per layer; these networks have at most four layers with
// parameters, as the reference one). Pooling adds no error of its own (bit-identical kernels,
// tests/test_cuda_kernels_layers.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "cpu_network.h"
#include "cuda_parity_fixture.h"
#include "cuda_test_util.h"
#include "model.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "cuda_context.h"
#include "cuda_network.h"
#include "fused_chunk.h"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::clean_images;
using test::max_abs;
using test::Tolerance;

Tolerance scaled(const std::vector<float>& ref, double c) { return {c * max_abs(ref) + 1e-30, 1e-4}; }

// ---- the fused path's choice: no GPU needed ------------------------------------------------------------------------

TEST(FusedPathChoice, OnlyTheReferenceArchitecture) {
  EXPECT_TRUE(cuda::fused_path_supports(Architecture::reference()));
  // The defaults spelled out are the same network, and to_string() writes it the reference's way.
  EXPECT_TRUE(cuda::fused_path_supports(Architecture::parse(
      "1x28x28:conv24k3s1p0,relu,pool2s2p0,conv36k3s1,relu,pool2s2,conv64k3p0,relu,flatten,dense64,relu,dense10")));
  // One suffix away from it: each is another network, which the fused kernel would compute wrongly.
  for (const char* other : {
           "1x28x28:conv24k3p1,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,pool2p1,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,pool2s1,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,avgpool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,pool2,conv36k3s2,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
       }) {
    SCOPED_TRACE(other);
    const Architecture a = Architecture::parse(other);
    EXPECT_NE(a.to_string(), Architecture::reference().to_string());
    EXPECT_FALSE(cuda::fused_path_supports(a));
  }
}

// ---- the layer path on other architectures -----------------------------------------------------------------------

struct ArchCase {
  const char* name;
  const char* arch;
};
// What GoogleTest and ctest print for the parameter.
void PrintTo(const ArchCase& c, std::ostream* os) { *os << c.arch; }

// Shapes (C x H x W after each layer) in the comments.
const ArchCase kArchitectures[] = {
    // 8x28x28, 8x14x14 (overlapping, padded max-pool), 16x7x7 (k4s2p1), 16x3x3 (avgpool2 drops a row and a column).
    {"PaddedStridedAvg", "1x28x28:conv8k3p1,relu,pool3s2p1,conv16k4s2p1,relu,avgpool2,flatten,dense10"},
    // 6x12x12 (k5s2), 6x5x5 (overlapping avgpool3s2), 10x5x5 ("same" conv), 10x4x4 (stride-1 max-pool), dense12.
    {"StrideOneMaxPool", "1x28x28:conv6k5s2,relu,avgpool3s2,conv10k3p1,relu,pool2s1,flatten,dense12,relu,dense10"},
    // 1x14x14 (a pool as the first layer: dx comes from its backward), 8x12x12, 8x4x4 (pool2s3: rows and columns no
    // window reaches), 4x3x3 (k2p1 stride 2 on a 4x4 map), then 4x2x2 (pool2p1: corner windows of one real pixel).
    {"PoolFirstStrideBeyondWindow",
     "1x28x28:avgpool2,conv8k3,relu,pool2s3,conv4k2s2p1,relu,pool2p1,flatten,dense10"},
};

class CudaLayerPathParity : public test::CudaBackendParity, public ::testing::WithParamInterface<ArchCase> {
 protected:
  Architecture architecture() const override { return Architecture::parse(GetParam().arch); }
};

TEST_P(CudaLayerPathParity, FusedPathRefused) {
  EXPECT_FALSE(cuda::fused_path_supports(model_.arch)) << model_.arch.to_string();
  EXPECT_FALSE(gpu_->path_refusal(OptimizePath::Fused).empty());
  EXPECT_TRUE(gpu_->path_refusal(OptimizePath::Layers).empty());
}

TEST_P(CudaLayerPathParity, Predict) {
  const int n = 200;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> p_cpu(static_cast<size_t>(n) * K_), p_gpu(p_cpu.size(), NAN);
  cpu_->predict(x.data(), n, p_cpu.data());
  gpu_->predict(x.data(), n, p_gpu.data());
  // As CudaBackendParity.Predict: logits agree to ~1e-6 of their scale; a probability moves by about p * that.
  EXPECT_TRUE(all_close("probabilities", p_gpu, p_cpu, {1e-5, 1e-4}));
}

TEST_P(CudaLayerPathParity, InputGradientAllLosses) {
  const int n = 40;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> dist;
  std::vector<int32_t> kind, cls;
  make_targets(n, &dist, &kind, &cls);
  for (LossKind loss : {LossKind::CrossEntropy, LossKind::KL, LossKind::CarliniWagner}) {
    SCOPED_TRACE(std::string("loss ") + to_string(loss));
    const float kappa = 0.5f;
    std::vector<float> pc(static_cast<size_t>(n) * K_), lc(n), gc(static_cast<size_t>(n) * D_);
    std::vector<float> pg(pc.size(), NAN), lg(n, NAN), gg(gc.size(), NAN);
    cpu_->input_gradient(x.data(), n, dist.data(), kind.data(), cls.data(), loss, kappa, pc.data(), lc.data(), gc.data());
    gpu_->input_gradient(x.data(), n, dist.data(), kind.data(), cls.data(), loss, kappa, pg.data(), lg.data(), gg.data());
    EXPECT_TRUE(all_close("probabilities", pg, pc, {1e-5, 1e-4}));
    EXPECT_TRUE(all_close("loss", lg, lc, {1e-5, 1e-4}));
    EXPECT_TRUE(all_close("input gradient", gg, gc, scaled(gc, 1e-4)));
  }
}

// The networks themselves: logits, dx and every parameter gradient (as CudaBackendParity.NetworkForwardBackward).
TEST_P(CudaLayerPathParity, NetworkForwardBackward) {
  const int n = 24;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> dlogits(static_cast<size_t>(n) * K_);
  for (float& v : dlogits) v = nd(rng_);

  CpuNetwork cpu_net(model_.arch);
  std::vector<const float*> cpu_params;
  for (const Tensor& t : model_.params) cpu_params.push_back(t.ptr());
  std::vector<std::vector<float>> cpu_grads;
  std::vector<float*> cpu_grad_ptrs;
  for (const Tensor& t : model_.params) cpu_grads.emplace_back(t.size());
  for (auto& g : cpu_grads) cpu_grad_ptrs.push_back(g.data());
  std::vector<float> dx_cpu(x.size());
  cpu_net.forward(cpu_params, x.data(), n);
  const std::vector<float> logits_cpu(cpu_net.logits(), cpu_net.logits() + static_cast<size_t>(n) * K_);
  cpu_net.backward(cpu_params, dlogits.data(), n, &cpu_grad_ptrs, dx_cpu.data());

  cuda::CudaContext ctx(0);
  if (ctx.allow_tf32()) NUDGE_GPU_SKIP("NUDGE_ALLOW_TF32 is set: FP32 parity does not apply");
  std::vector<std::unique_ptr<test::GuardedBuffer<float>>> params, grads;
  std::vector<const float*> gpu_params;
  std::vector<float*> gpu_grads;
  for (const Tensor& t : model_.params) {
    params.push_back(std::make_unique<test::GuardedBuffer<float>>(t.data));
    grads.push_back(std::make_unique<test::GuardedBuffer<float>>(t.size()));
    gpu_params.push_back(params.back()->get());
    gpu_grads.push_back(grads.back()->get());
  }
  test::GuardedBuffer<float> x_d(x), dlogits_d(dlogits), dx_d(x.size());
  cuda::CudaNetwork gpu_net(ctx, model_.arch);
  gpu_net.forward(gpu_params, x_d.get(), n);
  std::vector<float> logits_gpu(logits_cpu.size());
  ctx.synchronize();
  test::cuda_ok(cudaMemcpy(logits_gpu.data(), gpu_net.logits(), logits_gpu.size() * sizeof(float),
                           cudaMemcpyDeviceToHost), "logits");
  gpu_net.backward(gpu_params, dlogits_d.get(), n, &gpu_grads, dx_d.get());
  ctx.synchronize();

  EXPECT_TRUE(all_close("logits", logits_gpu, logits_cpu, scaled(logits_cpu, 1e-5)));
  EXPECT_TRUE(all_close("dx", dx_d.download(), dx_cpu, scaled(dx_cpu, 1e-4)));
  EXPECT_TRUE(dx_d.guard_intact());
  const auto specs = model_.arch.params();
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_TRUE(all_close("grad " + specs[i].name, grads[i]->download(), cpu_grads[i], scaled(cpu_grads[i], 1e-4)));
    EXPECT_TRUE(grads[i]->guard_intact()) << specs[i].name;
  }
}

// GPU against itself: an image in a batch gives what it gives alone (other batch buckets, other cuDNN algorithms).
TEST_P(CudaLayerPathParity, ImageInBatchMatchesImageAlone) {
  const int n = 70;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> dist;
  std::vector<int32_t> kind, cls;
  make_targets(n, &dist, &kind, &cls);
  std::vector<float> pb(static_cast<size_t>(n) * K_), lb(n), gb(static_cast<size_t>(n) * D_);
  gpu_->input_gradient(x.data(), n, dist.data(), kind.data(), cls.data(), LossKind::CrossEntropy, 0.0f, pb.data(),
                       lb.data(), gb.data());
  for (int i : {0, 37, n - 1}) {
    SCOPED_TRACE("image " + std::to_string(i));
    std::vector<float> p1(K_), l1(1), g1(D_);
    gpu_->input_gradient(x.data() + static_cast<size_t>(i) * D_, 1, dist.data() + static_cast<size_t>(i) * K_,
                         kind.data() + i, cls.data() + i, LossKind::CrossEntropy, 0.0f, p1.data(), l1.data(), g1.data());
    const std::vector<float> gbi(gb.begin() + static_cast<size_t>(i) * D_, gb.begin() + static_cast<size_t>(i + 1) * D_);
    const std::vector<float> pbi(pb.begin() + static_cast<size_t>(i) * K_, pb.begin() + static_cast<size_t>(i + 1) * K_);
    EXPECT_TRUE(all_close("probabilities", p1, pbi, {1e-5, 1e-4}));
    EXPECT_TRUE(all_close("input gradient", g1, gbi, scaled(gbi, 1e-4)));
  }
}

INSTANTIATE_TEST_SUITE_P(CudaArchitectures, CudaLayerPathParity, ::testing::ValuesIn(kArchitectures),
                         [](const ::testing::TestParamInfo<ArchCase>& info) { return std::string(info.param.name); });

#else  // !NUDGE_HAVE_CUDA

TEST(CudaLayerPathParity, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
