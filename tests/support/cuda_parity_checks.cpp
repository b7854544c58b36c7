// The checks the CUDA-vs-CPU parity suites share (tests/test_cuda_parity_backend.cpp on the reference architecture,
// tests/test_cuda_parity_layers.cpp on others). Tolerances: see the comment of test_cuda_parity_backend.cpp.
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu_network.h"
#include "cuda_parity_fixture.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "cuda_context.h"
#include "cuda_network.h"

namespace nudge::test {

Tolerance scaled(const std::vector<float>& ref, double c) { return {c * max_abs(ref) + 1e-30, 1e-4}; }

void CudaBackendParity::check_predict(int n) {
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> p_cpu(static_cast<size_t>(n) * K_), p_gpu(p_cpu.size(), NAN);
  cpu_->predict(x.data(), n, p_cpu.data());
  gpu_->predict(x.data(), n, p_gpu.data());
  // Logits agree to ~1e-6 of their scale (a few units); a probability moves by about p * that.
  EXPECT_TRUE(all_close("probabilities", p_gpu, p_cpu, {1e-5, 1e-4}));
}

void CudaBackendParity::check_input_gradient_all_losses(int n) {
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

void CudaBackendParity::check_network_forward_backward(int n) {
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

void CudaBackendParity::check_image_in_batch(int n, const std::vector<int>& images) {
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<float> dist;
  std::vector<int32_t> kind, cls;
  make_targets(n, &dist, &kind, &cls);
  std::vector<float> pb(static_cast<size_t>(n) * K_), lb(n), gb(static_cast<size_t>(n) * D_);
  gpu_->input_gradient(x.data(), n, dist.data(), kind.data(), cls.data(), LossKind::CrossEntropy, 0.0f, pb.data(),
                       lb.data(), gb.data());
  for (int i : images) {
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

}  // namespace nudge::test

#endif  // NUDGE_HAVE_CUDA
