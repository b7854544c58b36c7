// The CUDA backend against the CPU backend on the reference architecture with random weights, through the Backend
// interface and through the networks themselves: predict, input gradients for every loss, the whole backward pass
// (every parameter gradient), an image in a batch of 300 against the same image alone, and logit_backprop (the
// logits its callback sees, the input gradient, the forward-only path, a throwing callback, batches larger than the
// GPU's slice); plus the device-availability contract, which is checked on every machine (a machine without a GPU
// must fall back to the CPU with a reason).
//
// Inputs for gradient comparisons are drawn away from decision boundaries (clean_images, tests/support/
// cuda_parity_fixture.h). Network-level tolerances are relative to each tensor's scale (atol = c * max|ref|): small
// elements of a gradient are sums with cancellation, whose rounding error scales with the terms, not with the result.
// The constants are ~10x the error expected from compounding per-layer FP32 reordering (~1e-6 of scale per layer);
// tighten them from the maxima the first GPU runs print.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"
#include "cpu_backend.h"
#include "cpu_network.h"
#include "cuda_parity_fixture.h"
#include "cuda_test_util.h"
#include "errors.h"
#include "make_backend.h"
#include "model.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#include "cuda_context.h"
#include "cuda_network.h"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::clean_images;
using test::CudaBackendParity;
using test::max_abs;
using test::Tolerance;

// ---- availability: runs everywhere ---------------------------------------------------------------------------------

TEST(CudaAvailability, UsableOrFallsBackToCpuWithReason) {
  std::string why;
  const bool usable = cuda_device_usable(&why);
  std::printf("[   INFO   ] cuda_device_usable: %s%s\n", usable ? "yes" : "no: ", why.c_str());
  if (usable) {
    EXPECT_TRUE(why.empty());
    auto b = make_backend("auto");
    EXPECT_TRUE(b->is_gpu()) << b->name();
    return;
  }
  EXPECT_FALSE(why.empty()) << "an unusable device must come with a reason";
  auto b = make_backend("auto");
  EXPECT_FALSE(b->is_gpu()) << b->name();
  EXPECT_THROW(make_backend("cuda"), InputError);
}

// ---- predict and gradients ---------------------------------------------------------------------------------------

// Tolerance relative to a tensor's scale (see the file comment).
Tolerance scaled(const std::vector<float>& ref, double c) { return {c * max_abs(ref) + 1e-30, 1e-4}; }

TEST_F(CudaBackendParity, Predict) {
  const int n = 300;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> p_cpu(static_cast<size_t>(n) * K_), p_gpu(p_cpu.size(), NAN);
  cpu_->predict(x.data(), n, p_cpu.data());
  gpu_->predict(x.data(), n, p_gpu.data());
  // Logits agree to ~1e-6 of their scale (a few units); a probability moves by about p * that.
  EXPECT_TRUE(all_close("probabilities", p_gpu, p_cpu, {1e-5, 1e-4}));
}

TEST_F(CudaBackendParity, InputGradientAllLosses) {
  const int n = 60;
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

// The whole backward pass, every parameter gradient included, through the networks themselves (the Backend
// interface exposes parameter gradients only through Adam steps).
TEST_F(CudaBackendParity, NetworkForwardBackward) {
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

// GPU against itself: an image in a batch of 300 gives what it gives alone (other algorithms, other tiling).
TEST_F(CudaBackendParity, ImageInBatchMatchesImageAlone) {
  const int n = 300;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> dist;
  std::vector<int32_t> kind, cls;
  make_targets(n, &dist, &kind, &cls);
  std::vector<float> pb(static_cast<size_t>(n) * K_), lb(n), gb(static_cast<size_t>(n) * D_);
  gpu_->input_gradient(x.data(), n, dist.data(), kind.data(), cls.data(), LossKind::CrossEntropy, 0.0f, pb.data(),
                       lb.data(), gb.data());
  for (int i : {0, 1, 137, n - 1}) {
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

// logit_backprop with a fixed dlogits callback: the logits the callback sees, the input gradient of sum dlogits . z,
// the forward-only path (grad null, whatever the callback writes is ignored), and a throwing callback.
TEST_F(CudaBackendParity, LogitBackprop) {
  const int n = 60;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> fixed(static_cast<size_t>(n) * K_);
  for (float& v : fixed) v = nd(rng_);
  // Rows are handed out in disjoint slices (the CPU's may run at once on several threads): each records its own.
  struct Seen {
    std::vector<float> logits;
    std::vector<int> calls;
  };
  auto run = [&](Backend& b, float* grad, bool write_nan) {
    Seen s{std::vector<float>(static_cast<size_t>(n) * K_, NAN), std::vector<int>(n, 0)};
    b.logit_backprop(x.data(), n, [&](int first, int m, const float* z, float* dz) {
      std::copy_n(z, static_cast<size_t>(m) * K_, s.logits.begin() + static_cast<size_t>(first) * K_);
      for (int i = 0; i < m; ++i) ++s.calls[first + i];
      for (size_t k = 0; k < static_cast<size_t>(m) * K_; ++k)
        dz[k] = write_nan ? NAN : fixed[static_cast<size_t>(first) * K_ + k];
    }, grad);
    for (int i = 0; i < n; ++i) EXPECT_EQ(s.calls[i], 1) << b.name() << ": row " << i << " handed to the callback";
    return s;
  };
  std::vector<float> gc(static_cast<size_t>(n) * D_), gg(gc.size(), NAN);
  const Seen sc = run(*cpu_, gc.data(), false), sg = run(*gpu_, gg.data(), false);
  // The same forward and backward as NetworkForwardBackward's, with the same bounds.
  EXPECT_TRUE(all_close("logits", sg.logits, sc.logits, scaled(sc.logits, 1e-5)));
  EXPECT_TRUE(all_close("input gradient", gg, gc, scaled(gc, 1e-4)));

  // Forward only: the callback's dlogits (NaN here) are ignored and nothing is written through the null grad; the
  // gradient call after the throw below would also show a backward left half done.
  const Seen fg = run(*gpu_, nullptr, true);
  EXPECT_TRUE(all_close("logits (forward only)", fg.logits, sc.logits, scaled(sc.logits, 1e-5)));

  // A throwing callback: the exception reaches the caller as it was thrown (nothing is left queued on the stream
  // that reads host memory), and the backend stays usable.
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    SCOPED_TRACE(b->name());
    std::vector<float> gx(gc.size());
    try {
      const auto refuse = [](int, int, const float*, float*) { throw std::runtime_error("callback refused"); };
      b->logit_backprop(x.data(), n, refuse, gx.data());
      ADD_FAILURE() << "a throwing callback must propagate";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "callback refused");
    }
  }
  std::vector<float> again(gc.size(), NAN);
  run(*gpu_, again.data(), false);
  EXPECT_TRUE(all_close("input gradient after a throw", again, gc, scaled(gc, 1e-4)));
}

// Batches larger than the GPU's slice (4096 images) reach the callback row by row once each, with the logits a small
// batch of the same rows gives (forward only: no gradient, so no ties to avoid).
TEST_F(CudaBackendParity, LogitBackpropAcrossSlices) {
  const int n = 4096 + 37;
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * D_);
  for (float& v : x) v = u(rng_);
  std::vector<float> big(static_cast<size_t>(n) * K_, NAN);
  std::vector<int> calls(n, 0);
  gpu_->logit_backprop(x.data(), n, [&](int first, int m, const float* z, float*) {
    std::copy_n(z, static_cast<size_t>(m) * K_, big.begin() + static_cast<size_t>(first) * K_);
    for (int i = 0; i < m; ++i) ++calls[first + i];
  }, nullptr);
  EXPECT_TRUE(all_equal("rows handed to the callback", calls, std::vector<int>(n, 1)));
  const int tail = 50, from = n - tail;  // straddles the slice boundary
  std::vector<float> small(static_cast<size_t>(tail) * K_, NAN);
  gpu_->logit_backprop(x.data() + static_cast<size_t>(from) * D_, tail, [&](int first, int m, const float* z, float*) {
    std::copy_n(z, static_cast<size_t>(m) * K_, small.begin() + static_cast<size_t>(first) * K_);
  }, nullptr);
  const std::vector<float> big_tail(big.begin() + static_cast<size_t>(from) * K_, big.end());
  // Other batch sizes may take other cuDNN/cuBLAS algorithms: the logits' cross-device bound applies.
  EXPECT_TRUE(all_close("logits by slice vs alone", big_tail, small, scaled(small, 1e-5)));
}

#else  // !NUDGE_HAVE_CUDA

TEST(CudaParity, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
