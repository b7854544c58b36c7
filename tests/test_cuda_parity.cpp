// The CUDA backend against the CPU backend, end to end: forward, input gradients, parameter gradients, training
// steps and optimize chunks on the reference architecture; plus the device-availability contract, which is
// checked on every machine (a machine without a GPU must fall back to the CPU with a reason).
//
// Inputs for gradient comparisons are drawn away from decision boundaries (ReLU kinks, max-pool near-ties, logit
// near-ties; see away_from_ties): FP32 rounding differs between OpenBLAS and cuDNN/cuBLAS, and at a boundary such a
// difference flips a decision and moves a gradient by O(1), which would be a property of the inputs, not a bug.
// Network-level tolerances are relative to each tensor's scale (atol = c * max|ref|): small elements of a gradient
// are sums with cancellation, whose rounding error scales with the terms, not with the result. The constants are
// ~10x the error expected from compounding per-layer FP32 reordering (~1e-6 of scale per layer); tighten them from
// the maxima the first GPU runs print.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "cpu_backend.h"
#include "cpu_layers.h"
#include "cpu_network.h"
#include "cuda_test_util.h"
#include "errors.h"
#include "optimize_math.h"
#include "make_backend.h"
#include "model.h"
#include "optimize_engine.h"
#include "start_images.h"

#if NUDGE_HAVE_CUDA
#include "cuda_context.h"
#include "cuda_network.h"
#include "cuda_backend.h"
#endif

namespace nudge {

// gtest names a parameter with this in test listings ("GetParam() = fused"). Outside the anonymous namespace, so
// that argument-dependent lookup finds it.
inline void PrintTo(OptimizePath p, std::ostream* os) {
  *os << (p == OptimizePath::Fused ? "fused" : p == OptimizePath::Layers ? "layers" : "auto");
}

namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::Tolerance;

constexpr double kUlp = 1.0 / (1 << 24);  // unit roundoff of float (round to nearest)

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

// ---- fixtures ------------------------------------------------------------------------------------------------------

// The reference model with Glorot weights and small random biases (Glorot's zero biases would leave the bias
// paths untested).
Model test_model(uint64_t seed) {
  Model m = Model::glorot(Architecture::reference(), seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-0.1f, 0.1f);
  const auto specs = m.arch.params();
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].is_bias)
      for (float& b : m.params[i].data) b = d(rng);
  return m;
}

// Whether every decision in the CPU forward pass of image x is at least `margin` (relative to its layer's scale)
// from a tie: ReLU inputs away from 0, each max-pool window's maximum ahead of the runner-up (exact zeros from a
// ReLU tie identically on both sides), and the logits pairwise apart (argmax, and Carlini-Wagner's best other
// class).
bool away_from_ties(const Model& m, const float* x, double margin) {
  const Architecture& a = m.arch;
  std::vector<float> cur(x, x + a.input.size()), next;
  size_t p = 0;
  auto scale_of = [](const std::vector<float>& v) {
    float s = 0;
    for (float f : v) s = std::max(s, std::fabs(f));
    return static_cast<double>(s);
  };
  for (const LayerSpec& l : a.layers) {
    next.assign(l.out.size(), 0.0f);
    switch (l.kind) {
      case LayerKind::Conv:
        cpu::conv2d_forward(cur.data(), 1, l.in, m.params[p].ptr(), m.params[p + 1].ptr(), l.out_channels, l.kernel,
                            next.data());
        p += 2;
        break;
      case LayerKind::Dense:
        cpu::dense_forward(cur.data(), 1, l.in.size(), m.params[p].ptr(), m.params[p + 1].ptr(), l.out_channels,
                           next.data());
        p += 2;
        break;
      case LayerKind::Relu: {
        const double lim = margin * scale_of(cur);
        for (float v : cur)
          if (std::fabs(v) < lim) return false;
        cpu::relu_forward(cur.data(), cur.size(), next.data());
        break;
      }
      case LayerKind::MaxPool: {
        const double lim = margin * scale_of(cur);
        const int k = l.kernel;
        for (int c = 0; c < l.in.c; ++c)
          for (int oh = 0; oh < l.out.h; ++oh)
            for (int ow = 0; ow < l.out.w; ++ow) {
              float top = -INFINITY, second = -INFINITY;
              for (int i = 0; i < k; ++i)
                for (int j = 0; j < k; ++j) {
                  const float v = cur[(static_cast<size_t>(c) * l.in.h + oh * k + i) * l.in.w + ow * k + j];
                  if (v > top) {
                    second = top;
                    top = v;
                  } else if (v > second) {
                    second = v;
                  }
                }
              if (!(top == 0 && second == 0) && top - second < lim) return false;
            }
        std::vector<int32_t> idx(l.out.size());
        cpu::maxpool_forward(cur.data(), 1, l.in, k, next.data(), idx.data());
        break;
      }
      case LayerKind::Flatten: next = cur; break;
    }
    cur.swap(next);
  }
  std::vector<float> z = cur;
  std::sort(z.begin(), z.end());
  const double lim = margin * scale_of(z);
  for (size_t j = 1; j < z.size(); ++j)
    if (z[j] - z[j - 1] < lim) return false;
  return true;
}

// n images uniform in [0,1) whose decisions are 1e-5 of scale from any tie (~10x the FP32 disagreement).
std::vector<float> clean_images(const Model& m, int n, std::mt19937_64& rng) {
  const int D = m.arch.input.size();
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> out(static_cast<size_t>(n) * D), img(D);
  int attempts = 0;
  for (int i = 0; i < n;) {
    if (++attempts > 100 * n + 100) throw std::runtime_error("clean_images: could not draw images away from ties");
    for (float& v : img) v = u(rng);
    if (!away_from_ties(m, img.data(), 1e-5)) continue;
    std::copy(img.begin(), img.end(), out.begin() + static_cast<size_t>(i) * D);
    ++i;
  }
  return out;
}

double max_abs(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s = std::max(s, static_cast<double>(std::fabs(f)));
  return s;
}

// Tolerance relative to a tensor's scale (see the file comment).
Tolerance scaled(const std::vector<float>& ref, double c) { return {c * max_abs(ref) + 1e-30, 1e-4}; }

class CudaBackendParity : public ::testing::Test {
 protected:
  void SetUp() override {
    NUDGE_REQUIRE_CUDA_DEVICE();
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    rng_.seed(test::test_seed() ^ std::hash<std::string>{}(name));
    model_ = test_model(rng_());
    cpu_ = make_cpu_backend();
    gpu_ = make_cuda_backend();
    std::printf("[   INFO   ] %s vs %s\n", gpu_->name().c_str(), cpu_->name().c_str());
    cpu_->load_model(model_);
    gpu_->load_model(model_);
    D_ = model_.arch.input.size();
    K_ = model_.arch.num_classes();
  }

  // Mixed targets: one-hot, soft (with zeros) and untargeted, entries cycling through the kinds.
  void make_targets(int n, std::vector<float>* dist, std::vector<int32_t>* kind, std::vector<int32_t>* cls) {
    dist->assign(static_cast<size_t>(n) * K_, 0.0f);
    kind->resize(n);
    cls->resize(n);
    std::uniform_int_distribution<int> c(0, K_ - 1);
    for (int i = 0; i < n; ++i) {
      (*kind)[i] = i % 3;
      (*cls)[i] = c(rng_);
      float* t = dist->data() + static_cast<size_t>(i) * K_;
      if ((*kind)[i] == static_cast<int>(TargetKind::OneHot)) t[(*cls)[i]] = 1.0f;
      if ((*kind)[i] == static_cast<int>(TargetKind::Soft)) {
        t[(*cls)[i]] = 0.6f;
        t[((*cls)[i] + 1) % K_] = 0.3f;
        t[((*cls)[i] + 4) % K_] = 0.1f;
      }
    }
  }

  std::mt19937_64 rng_;
  Model model_;
  std::unique_ptr<Backend> cpu_, gpu_;
  int D_ = 0, K_ = 0;
};

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

TEST_F(CudaBackendParity, TrainSteps) {
  const int n = 64, steps = 3;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::vector<int32_t> labels(n);
  std::uniform_int_distribution<int> c(0, K_ - 1);
  for (int32_t& y : labels) y = c(rng_);
  AdamConfig adam;
  for (int s = 0; s < steps; ++s) {
    const TrainStepResult rc = cpu_->train_step(x.data(), labels.data(), n, adam);
    const TrainStepResult rg = gpu_->train_step(x.data(), labels.data(), n, adam);
    EXPECT_NEAR(rg.loss_sum, rc.loss_sum, 1e-4 * std::fabs(rc.loss_sum)) << "step " << s;
    // After the first step the two models differ by rounding, so an image near a logit tie may change its argmax.
    if (s == 0) {
      EXPECT_EQ(rg.correct, rc.correct);
    } else {
      EXPECT_LE(std::abs(rg.correct - rc.correct), 1) << "step " << s;
    }
  }
  Model mc, mg;
  cpu_->store_model(mc);
  gpu_->store_model(mg);
  // Compare the updates (after - before). A parameter whose gradient is within rounding of zero can take an Adam
  // step of the other sign on the other device, so allow 0.1% of them to differ, each by no more than 2 lr per step.
  size_t total = 0, off = 0;
  double worst = 0;
  for (size_t i = 0; i < model_.params.size(); ++i)
    for (size_t j = 0; j < model_.params[i].size(); ++j) {
      const double w0 = model_.params[i].data[j];
      const double uc = mc.params[i].data[j] - w0, ug = mg.params[i].data[j] - w0;
      const double err = std::fabs(ug - uc);
      worst = std::max(worst, err);
      off += err > 1e-6 + 1e-3 * std::fabs(uc);
      ++total;
    }
  EXPECT_LE(off, total / 1000) << off << " of " << total << " parameter updates differ; worst by " << worst;
  EXPECT_LE(worst, 2.0 * adam.lr * steps);
}

// Attacked twins of clean images x: each pixel moved by up to eps (clipped to [0, 1]), redrawn until the image is
// away from ties as clean_images' are, so both passes of a TRADES step decide the same on both devices.
std::vector<float> attacked_images(const Model& m, const std::vector<float>& x, float eps, std::mt19937_64& rng) {
  const int D = m.arch.input.size(), n = static_cast<int>(x.size() / D);
  std::uniform_real_distribution<float> u(-eps, eps);
  std::vector<float> out(x.size()), img(D);
  for (int i = 0; i < n; ++i) {
    for (int attempt = 0;; ++attempt) {
      if (attempt > 1000) throw std::runtime_error("attacked_images: could not draw an image away from ties");
      for (int d = 0; d < D; ++d) img[d] = std::clamp(x[static_cast<size_t>(i) * D + d] + u(rng), 0.0f, 1.0f);
      if (away_from_ties(m, img.data(), 1e-5)) break;
    }
    std::copy(img.begin(), img.end(), out.begin() + static_cast<size_t>(i) * D);
  }
  return out;
}

// One TRADES step (beta 6, the paper's) from the same model on both devices, under two Adam settings: the default,
// whose first step is ~lr * sign(g) and so checks every gradient's sign, and eps = 1 >> |g|, whose step is
// ~lr * g and so checks the gradients' magnitudes too (a first Adam step is otherwise blind to their scale).
TEST_F(CudaBackendParity, TrainStepTrades) {
  const int n = 48;
  const float beta = 6.0f;
  // eps 0.3, an MNIST-sized budget: at 0.1 this random model's p(clean) and p(attacked) nearly agree, the KL term's
  // gradient is small, and (measured with the CPU standing in for the GPU) beta off by 10% went unnoticed.
  const std::vector<float> xc = clean_images(model_, n, rng_), xa = attacked_images(model_, xc, 0.3f, rng_);
  std::vector<int32_t> labels(n);
  std::uniform_int_distribution<int> c(0, K_ - 1);
  for (int32_t& y : labels) y = c(rng_);

  // The reference gradient, from the CPU network on [clean; attacked] and the shared TRADES maths.
  std::vector<float> x2(xc);
  x2.insert(x2.end(), xa.begin(), xa.end());
  CpuNetwork net(model_.arch);
  std::vector<const float*> params;
  for (const Tensor& t : model_.params) params.push_back(t.ptr());
  net.forward(params, x2.data(), 2 * n);
  const std::vector<float> z(net.logits(), net.logits() + static_cast<size_t>(2) * n * K_);
  const double z_bound = 1e-5 * max_abs(z);  // the logits' agreement bound (NetworkForwardBackward)
  std::vector<float> dlogits(z.size());
  double ce_bound = 0, kl_bound = 0;
  for (int i = 0; i < n; ++i) {
    const float *zi = z.data() + static_cast<size_t>(i) * K_, *zai = z.data() + static_cast<size_t>(n + i) * K_;
    float *dzi = dlogits.data() + static_cast<size_t>(i) * K_, *dzai = dlogits.data() + static_cast<size_t>(n + i) * K_;
    const TradesTerms t = trades_loss_one(zi, zai, K_, labels[i], beta, 1.0f / n, dzi, dzai);
    // First order in the logits' disagreement: |dCE| <= |p - onehot|_1 dz <= 2 dz; for KL, the attacked logits'
    // gradient q - p has L1 norm <= 2, the clean ones' sum_j p_j |log p_j - log q_j - KL| <= 2 max_j |log p_j -
    // log q_j|. Plus one float rounding of each per-example value the GPU stores.
    const double lse = log_sum_exp(zi, K_), lsea = log_sum_exp(zai, K_);
    double spread = 0;
    for (int j = 0; j < K_; ++j) spread = std::max(spread, std::fabs((zi[j] - lse) - (zai[j] - lsea)));
    ce_bound += 2 * z_bound + 2 * kUlp * t.ce;
    kl_bound += (2 + 2 * spread) * z_bound + 2 * kUlp * t.kl;
  }
  std::vector<std::vector<float>> g;
  std::vector<float*> gp;
  for (const Tensor& t : model_.params) g.emplace_back(t.size());
  for (auto& v : g) gp.push_back(v.data());
  net.backward(params, dlogits.data(), 2 * n, &gp, nullptr);

  AdamConfig sign_like, proportional;
  proportional.eps = 1.0f;
  for (const AdamConfig& adam : {sign_like, proportional}) {
    SCOPED_TRACE("Adam eps " + std::to_string(adam.eps));
    cpu_->load_model(model_);  // fresh Adam state: this is step 1
    gpu_->load_model(model_);
    const TrainStepResult rc = cpu_->train_step_trades(xc.data(), xa.data(), labels.data(), n, beta, adam);
    const TrainStepResult rg = gpu_->train_step_trades(xc.data(), xa.data(), labels.data(), n, beta, adam);
    EXPECT_NEAR(rg.loss_sum, rc.loss_sum, ce_bound);
    EXPECT_NEAR(rg.kl_sum, rc.kl_sum, kl_bound);
    // Every decision is 1e-5 of scale from a tie, more than the logits disagree: the counts are exact.
    EXPECT_EQ(rg.correct, rc.correct);
    EXPECT_EQ(rg.adv_correct, rc.adv_correct);

    Model mc, mg;
    cpu_->store_model(mc);
    gpu_->store_model(mg);
    // Adam's first step is lr * f(g), f(g) = g / (|g| + eps) (m-hat = g, sqrt(v-hat) = |g|), whose slope
    // eps / (|g| + eps)^2 is largest nearest 0, so |f(g) - f(g')| <= dg eps / (max(|g| - dg, 0) + eps)^2 for
    // |g - g'| <= dg, and <= 2 always. dg = 1e-3 of the tensor's max |g|: 1e-4 from the backward's reordering
    // (NetworkForwardBackward's bound), plus the dlogits' change with logits that disagree by ~1e-6 of their scale,
    // through TRADES' Jacobian, ~(1 + 2 beta)(1 + 2 max|z|) ~ 100x that at beta 6. Rounding: each side rounds the
    // new weight to float (one ulp of |w|, 2u, each), and its ~8 float operations of the step itself differ in
    // order and contraction (16u of lr).
    size_t zero = 0, loose = 0, total = 0, bad = 0;
    double worst = 0;  // |ug - uc| / bound, printed so the first GPU run can tighten dg
    for (size_t i = 0; i < model_.params.size(); ++i) {
      const double dg = 1e-3 * max_abs(g[i]) + 1e-30;
      for (size_t j = 0; j < model_.params[i].size(); ++j, ++total) {
        const double w0 = model_.params[i].data[j], gij = std::fabs(g[i][j]);
        const double uc = mc.params[i].data[j] - w0, ug = mg.params[i].data[j] - w0;
        const double lip = dg * adam.eps / std::pow(std::max(gij - dg, 0.0) + adam.eps, 2);
        zero += gij == 0;  // dead units' weights: sums of exact zeros, unless a GPU algorithm leaves a residue
        loose += gij != 0 && gij <= dg;
        const double bound = adam.lr * std::min(2.0, lip) + 4 * kUlp * std::fabs(w0) + 16 * kUlp * adam.lr;
        const double err = std::fabs(ug - uc);
        worst = std::max(worst, err / bound);
        if (err > bound && bad++ < 5)
          ADD_FAILURE() << model_.arch.params()[i].name << "[" << j << "]: cpu update " << uc << ", gpu " << ug
                        << " (bound " << bound << "), |g| " << gij << ", dg " << dg;
      }
    }
    EXPECT_EQ(bad, 0u) << "parameter updates outside their bound";
    std::printf("[   INFO   ] Adam eps %g: worst update difference %.3g of its bound; of %zu gradients %zu are 0 "
                "and %zu within dg of 0\n", adam.eps, worst, total, zero, loose);
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

// ---- optimize chunks: a fixed job ----------------------------------------------------------------------------------

// A fixed job (fixed seeds, so its outcome is known): noise images x {one-hot, untargeted, soft} targets x
// {eps 0.3, eps 0.01} under L-inf, Adam, early stop. Entries whose CPU outcome is borderline (a success within 8
// steps of the budget, or a failure within 0.05 of its goal) are left out, as inputs near ReLU kinks are: there a
// rounding difference legitimately flips the outcome. What remains must come out the same on the GPU.
struct FixedJob {
  Model model;
  StepConfig cfg;
  int steps = 70, n = 0;
  std::vector<float> start, dist, eps;
  std::vector<int32_t> kind, cls;
  ChunkInput input() const {
    ChunkInput in;
    in.n = n;
    in.start = start.data();
    in.target_dist = dist.data();
    in.target_kind = kind.data();
    in.target_class = cls.data();
    in.eps = eps.data();
    return in;
  }
  void add(const FixedJob& from, int i) {
    const size_t D = model.arch.input.size(), K = model.arch.num_classes();
    start.insert(start.end(), from.start.begin() + i * D, from.start.begin() + (i + 1) * D);
    dist.insert(dist.end(), from.dist.begin() + i * K, from.dist.begin() + (i + 1) * K);
    eps.push_back(from.eps[i]);
    kind.push_back(from.kind[i]);
    cls.push_back(from.cls[i]);
    ++n;
  }
};

ChunkResult run_job(Backend& b, const FixedJob& j) {
  b.load_model(j.model);
  auto chunk = b.begin_optimize(j.input(), j.cfg);
  for (int s = 0; s < j.steps && chunk->active_count() > 0; ++s) chunk->step();
  return chunk->finish();
}

// How far entry i's best iterate is from its goal, in the goal's own units (negative: met).
double goal_gap(const FixedJob& j, const ChunkResult& r, int i) {
  const int K = j.model.arch.num_classes();
  const float* p = r.best_probs.data() + static_cast<size_t>(i) * K;
  switch (static_cast<TargetKind>(j.kind[i])) {
    case TargetKind::OneHot: return j.cfg.stop_prob - p[j.cls[i]];
    case TargetKind::Untargeted: {
      // Met when another class is on top and p[label] <= 1 - stop_prob: the gap is the larger shortfall.
      float other = 0;
      for (int k = 0; k < K; ++k)
        if (k != j.cls[i]) other = std::max(other, p[k]);
      return std::max(p[j.cls[i]] - (1.0 - j.cfg.stop_prob), static_cast<double>(p[j.cls[i]] - other));
    }
    case TargetKind::Soft: return kl_divergence(j.dist.data() + static_cast<size_t>(i) * K, p, K) - j.cfg.stop_kl;
  }
  return 0;
}

const FixedJob& fixed_job() {
  static const FixedJob job = [] {
    FixedJob all;
    all.model = test_model(20240611);
    // Glorot's logits barely depend on the input; scaling every weight by 1.6 makes them ~10x steeper (five
    // positively homogeneous layers), so targets become reachable within the budget.
    const auto specs = all.model.arch.params();
    for (size_t i = 0; i < specs.size(); ++i)
      if (!specs[i].is_bias)
        for (float& w : all.model.params[i].data) w *= 1.6f;
    all.cfg.loss = LossKind::CrossEntropy;
    all.cfg.optimizer = InputOptimizer::Adam;
    all.cfg.lr = 0.02f;
    all.cfg.early_stop = true;
    all.cfg.stop_prob = 0.8f;
    all.cfg.stop_kl = 0.05f;
    all.cfg.norm = Norm::Linf;
    const int D = all.model.arch.input.size(), K = all.model.arch.num_classes(), sources = 16;
    auto cpu = make_cpu_backend();
    cpu->load_model(all.model);
    std::vector<float> img(D), probs(K);
    for (int s = 0; s < sources; ++s) {
      noise_image(5, s, D, img.data());
      cpu->predict(img.data(), 1, probs.data());
      const int pred = static_cast<int>(std::max_element(probs.begin(), probs.end()) - probs.begin());
      for (int kind = 0; kind < 3; ++kind)
        for (float eps : {0.3f, 0.01f}) {
          all.start.insert(all.start.end(), img.begin(), img.end());
          std::vector<float> t(K, 0.0f);
          int cls = pred;
          if (kind == static_cast<int>(TargetKind::OneHot)) {
            cls = (pred + 1 + s % (K - 1)) % K;
            t[cls] = 1.0f;
          } else if (kind == static_cast<int>(TargetKind::Soft)) {
            // The start's own distribution pulled towards another class: reachable, but not at step 0.
            cls = (pred + 3) % K;
            for (int k = 0; k < K; ++k) t[k] = 0.75f * probs[k] + (k == cls ? 0.25f : 0.0f);
          }
          all.dist.insert(all.dist.end(), t.begin(), t.end());
          all.kind.push_back(kind);
          all.cls.push_back(cls);
          all.eps.push_back(eps);
          ++all.n;
        }
    }
    const ChunkResult r = run_job(*cpu, all);
    FixedJob kept;
    kept.model = all.model;
    kept.cfg = all.cfg;
    kept.steps = all.steps;
    for (int i = 0; i < all.n; ++i) {
      const bool clear = r.success_step[i] >= 0 ? r.success_step[i] <= all.steps - 8 : goal_gap(all, r, i) > 0.05;
      if (clear) kept.add(all, i);
    }
    return kept;
  }();
  return job;
}

// Runs without a GPU: the fixed job must keep enough of both outcomes after the borderline entries are dropped.
TEST(OptimizeFixture, HasClearSuccessesAndFailures) {
  const FixedJob& j = fixed_job();
  auto cpu = make_cpu_backend();
  const ChunkResult r = run_job(*cpu, j);
  int successes = 0;
  for (int i = 0; i < j.n; ++i) successes += r.success_step[i] >= 0;
  std::printf("[   INFO   ] fixed job: %d entries kept of 96, %d succeed on the CPU\n", j.n, successes);
  EXPECT_GE(j.n, 80) << "too many borderline entries: change the job";
  EXPECT_GE(successes, 20);
  EXPECT_GE(j.n - successes, 20);
}

// The optimize parity tests run on both GPU paths, each selected explicitly (Auto would take the fused kernel on the
// reference architecture and leave the layer-by-layer chunk, the only GPU path of every other architecture,
// unchecked). Each test also checks that the path it asked for is the one that ran.
class CudaOptimizeParity : public CudaBackendParity, public ::testing::WithParamInterface<OptimizePath> {
 protected:
  void SetUp() override {
    CudaBackendParity::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    gpu_->set_optimize_path(GetParam());
  }
  std::string path_name() const { return GetParam() == OptimizePath::Fused ? "fused" : "layers"; }
};

std::string path_param_name(const ::testing::TestParamInfo<OptimizePath>& info) {
  return info.param == OptimizePath::Fused ? "Fused" : "Layers";
}

TEST_P(CudaOptimizeParity, ChunkSameSuccessSet) {
  const FixedJob& j = fixed_job();
  const ChunkResult rc = run_job(*cpu_, j), rg = run_job(*gpu_, j);
  EXPECT_EQ(gpu_->optimize_path_used(), path_name());
  ASSERT_EQ(rg.success_step.size(), rc.success_step.size());
  int moved = 0;
  double worst_prob = 0;
  for (int i = 0; i < j.n; ++i) {
    SCOPED_TRACE("entry " + std::to_string(i));
    EXPECT_EQ(rg.success_step[i] >= 0, rc.success_step[i] >= 0) << "cpu step " << rc.success_step[i] << ", gpu "
                                                                 << rg.success_step[i];
    if (rg.success_step[i] >= 0 && rc.success_step[i] >= 0) {
      // Trajectories drift apart by rounding; a slow climb crosses the goal a little earlier or later.
      EXPECT_LE(std::abs(rg.success_step[i] - rc.success_step[i]), std::max(2, rc.success_step[i] / 10));
      moved += rg.success_step[i] != rc.success_step[i];
    }
    // Early stop: an entry's updates are its success step, or the whole budget.
    EXPECT_EQ(rg.updates[i], rg.success_step[i] >= 0 ? rg.success_step[i] : j.steps);
    const int K = j.model.arch.num_classes();
    for (int k = 0; k < K; ++k)
      worst_prob = std::max(worst_prob, std::fabs(static_cast<double>(rg.best_probs[i * K + k]) - rc.best_probs[i * K + k]));
  }
  std::printf("[   INFO   ] %s: success steps differ for %d of %d entries; max best-probability difference %.3g\n",
              path_name().c_str(), moved, j.n, worst_prob);
  EXPECT_LE(moved, j.n / 8);
}

// Without early stopping every entry takes the whole budget, and no step synchronizes with the host.
TEST_P(CudaOptimizeParity, ChunkWithoutEarlyStop) {
  FixedJob j = fixed_job();  // a copy
  j.cfg.early_stop = false;
  j.cfg.norm = Norm::L2;
  for (float& e : j.eps) e *= 10.0f;
  j.steps = 10;
  const ChunkResult rc = run_job(*cpu_, j), rg = run_job(*gpu_, j);
  EXPECT_EQ(gpu_->optimize_path_used(), path_name());
  EXPECT_TRUE(all_equal("updates", rg.updates, rc.updates));
  for (int i = 0; i < j.n; ++i) {
    EXPECT_EQ(rg.updates[i], j.steps) << "entry " << i;
    // Ten Adam steps from the same start keep the iterates close; where both met the goal at the same step (or
    // never), their best iterates are the same step's and their losses agree closely.
    if (rg.success_step[i] == rc.success_step[i]) {
      EXPECT_NEAR(rg.best_loss[i], rc.best_loss[i], 1e-3 + 1e-2 * std::fabs(rc.best_loss[i])) << "entry " << i;
    }
  }
}

// A chunk without random starts reports each entry's class at its first evaluation (ChunkResult::start_class), which
// the engine takes instead of a predict pass: it must be the model's argmax on the start image (the CPU's, except
// where the CPU's top two probabilities are within 1e-4, the probabilities' tolerance). With random starts (init)
// the first iterate is not the start image and nothing is reported.
TEST_P(CudaOptimizeParity, ChunkReportsStartClasses) {
  const FixedJob& j = fixed_job();
  gpu_->load_model(j.model);
  cpu_->load_model(j.model);
  std::vector<float> probs(static_cast<size_t>(j.n) * K_);
  cpu_->predict(j.start.data(), j.n, probs.data());
  auto chunk = gpu_->begin_optimize(j.input(), j.cfg);
  for (int s = 0; s < 3; ++s) chunk->step();
  const ChunkResult r = chunk->finish();
  EXPECT_EQ(gpu_->optimize_path_used(), path_name());
  ASSERT_EQ(r.start_class.size(), static_cast<size_t>(j.n));
  int compared = 0;
  for (int i = 0; i < j.n; ++i) {
    const float* q = probs.data() + static_cast<size_t>(i) * K_;
    const int top = static_cast<int>(std::max_element(q, q + K_) - q);
    bool tie = false;
    for (int k = 0; k < K_; ++k) tie |= k != top && q[top] - q[k] < 1e-4f;
    if (tie) continue;
    ++compared;
    EXPECT_EQ(r.start_class[i], top) << "entry " << i;
  }
  EXPECT_GE(compared, j.n * 3 / 4);

  ChunkInput with_init = j.input();
  with_init.init = j.start.data();
  auto c2 = gpu_->begin_optimize(with_init, j.cfg);
  EXPECT_TRUE(c2->finish().start_class.empty()) << "a random start is not the start image";
}

// The engine begins chunk k+1 (its upload queued on the copy stream) while chunk k still computes, so several chunk
// lifetimes overlap on the device. Run one job in small chunks and in one: the same rows in the same order and the
// same outcomes. The fused path computes each entry alone, so there everything must match exactly; layer by layer,
// cuDNN may pick another algorithm for another batch size, so probabilities agree to rounding and an entry whose
// goal is crossed by a hair may flip.
TEST_P(CudaOptimizeParity, EngineWithOverlappingChunksMatchesOneChunk) {
  struct Rows : RowSink {
    std::vector<long> index;
    std::vector<int> success_step;
    std::vector<float> probs, images;
    void row(const RowResult& r) override {
      index.push_back(r.row);
      success_step.push_back(r.success_step);
      probs.insert(probs.end(), r.probs.begin(), r.probs.end());
      images.insert(images.end(), r.image, r.image + 784);
    }
  };
  OptimizeJob job;
  job.count = 40;
  job.target = "all";  // 400 rows
  job.steps = 6;
  job.step.early_stop = true;
  job.step.stop_prob = 0.9f;
  const StartImages starts(job, nullptr, 28, 28);
  const OptimizePath path = GetParam();
  {
    Rows small, whole;
    job.chunk = 48;  // 9 chunks
    run_optimize(*gpu_, model_, job, starts, small, false);
    job.chunk = 400;
    run_optimize(*gpu_, model_, job, starts, whole, false);
    EXPECT_EQ(gpu_->optimize_path_used(), path_name());
    ASSERT_EQ(small.index.size(), 400u);
    ASSERT_EQ(whole.index.size(), 400u);
    for (size_t i = 0; i < small.index.size(); ++i) ASSERT_EQ(small.index[i], static_cast<long>(i));
    if (path == OptimizePath::Fused) {
      EXPECT_TRUE(all_equal("success steps", small.success_step, whole.success_step));
      EXPECT_TRUE(all_equal("probabilities", small.probs, whole.probs));
      EXPECT_TRUE(all_equal("images", small.images, whole.images));
    } else {
      // Rows whose success step moved report another iterate; the others must agree to rounding.
      int moved = 0;
      std::vector<float> a, b;
      for (size_t i = 0; i < small.index.size(); ++i) {
        if (small.success_step[i] != whole.success_step[i]) {
          ++moved;
          continue;
        }
        a.insert(a.end(), small.probs.begin() + i * 10, small.probs.begin() + (i + 1) * 10);
        b.insert(b.end(), whole.probs.begin() + i * 10, whole.probs.begin() + (i + 1) * 10);
      }
      EXPECT_LE(moved, 8) << "of 400 rows";
      EXPECT_TRUE(all_close("probabilities of rows with the same success step", a, b, {2e-3, 0}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BothPaths, CudaOptimizeParity, ::testing::Values(OptimizePath::Fused, OptimizePath::Layers),
                         path_param_name);

#else  // !NUDGE_HAVE_CUDA

TEST(CudaParity, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
