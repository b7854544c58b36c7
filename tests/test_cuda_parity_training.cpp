// The CUDA backend's training steps against the CPU backend's on the reference architecture with random weights:
// three cross-entropy Adam steps (losses, correct counts, parameter updates), and one TRADES step (beta 6) under two
// Adam settings, a sign-like first step and one proportional to the gradient, whose parameter updates are bounded
// from the logits' disagreement through TRADES' Jacobian and Adam's first step. Clean and attacked images are drawn
// away from decision boundaries (tests/support/cuda_parity_fixture.h), so both devices decide the same.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"
#include "cpu_network.h"
#include "cuda_parity_fixture.h"
#include "cuda_test_util.h"
#include "model.h"
#include "optimize_math.h"

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::away_from_ties;
using test::clean_images;
using test::CudaBackendParity;
using test::kUlp;
using test::max_abs;

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


#endif  // NUDGE_HAVE_CUDA

}  // namespace
}  // namespace nudge
