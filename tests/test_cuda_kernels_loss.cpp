// The softmax and loss kernels against their CPU twins, the shared maths of host/core/optimize_math.h: softmax_loss
// for every loss and target kind (K = 2, 10 and 80, one row in ten with logits of +-1e4), its training mode (labels,
// gradients divided by n, correct counts), softmax alone, and the TRADES loss (K = 2, 10, 37; beta 0 and 6; tied
// maxima). Fresh seeded random inputs (NUDGE_TEST_SEED=<seed> replays a run); outputs are poisoned with NaN before
// each launch and guarded by a sentinel region, so an unwritten element or a stray write fails.
//
// Tolerances: |gpu - ref| <= atol + rtol |ref| with rtol 1e-4 for FP32 arithmetic, and 2 ulps of float for TRADES,
// whose two sides evaluate the same double expressions and round once; each atol is reasoned at its use. These are
// bounds from the arithmetic, not yet from measurement on a GPU: the first GPU run prints the measured maxima on any
// failure, and bounds should then be tightened.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_kernel_fixtures.h"
#include "cuda_test_util.h"
#include "optimize_math.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "softmax_loss.cuh"
#include "trades_loss.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::CudaKernels;
using test::CudaLossKernels;
using test::GuardedBuffer;
using test::kUlp;
using test::LossCase;

// ---- softmax and losses ------------------------------------------------------------------------------------------

TEST_F(CudaLossKernels, SoftmaxLossAllKinds) {
  for (int K : {2, 10, 80})  // 80 > 64: the CPU twin's float path for untargeted gradients
    for (LossKind loss : {LossKind::CrossEntropy, LossKind::KL, LossKind::CarliniWagner}) {
      SCOPED_TRACE(std::string("loss ") + to_string(loss) + " K=" + std::to_string(K));
      const LossCase c = make_case(K);
      const float kappa = 0.3f;
      const size_t rk = static_cast<size_t>(c.rows) * K;
      std::vector<float> probs_ref(rk), dz_ref(rk), loss_ref(c.rows);
      for (int i = 0; i < c.rows; ++i) {
        const int e = c.entry[i];
        loss_ref[i] = loss_forward_backward_one(c.logits.data() + static_cast<size_t>(i) * K, K,
                                                c.dist.data() + static_cast<size_t>(e) * K,
                                                static_cast<TargetKind>(c.kind[e]), c.cls[e], loss, kappa,
                                                probs_ref.data() + static_cast<size_t>(i) * K,
                                                dz_ref.data() + static_cast<size_t>(i) * K);
      }
      GuardedBuffer<float> logits(c.logits), dist(c.dist), probs(rk), dz(rk), lossd(c.rows);
      GuardedBuffer<int32_t> entry(c.entry), kind(c.kind), cls(c.cls);
      cuda::SoftmaxLossParams p;
      p.logits = logits.get();
      p.rows = c.rows;
      p.K = K;
      p.entry = entry.get();
      p.target_dist = dist.get();
      p.target_kind = kind.get();
      p.target_class = cls.get();
      p.loss = loss;
      p.kappa = kappa;
      p.probs = probs.get();
      p.loss_out = lossd.get();
      p.dlogits = dz.get();
      cuda::softmax_loss_cuda(p, 0);
      // Probabilities and gradients are in [-1, 1]: 1e-6 is ~16 ulps of 1. Both sides compute them in double and
      // round once, so they usually agree exactly.
      EXPECT_TRUE(all_close("probs", probs.download(), probs_ref, {1e-6, 1e-4}));
      EXPECT_TRUE(all_close("dlogits", dz.download(), dz_ref, {1e-6, 1e-4}));
      // Losses reach ~2e4 for the scaled logits, where rtol dominates; 1e-5 covers small losses near 0.
      EXPECT_TRUE(all_close("loss", lossd.download(), loss_ref, {1e-5, 1e-4}));
      EXPECT_TRUE(probs.guard_intact());
      EXPECT_TRUE(dz.guard_intact());
      EXPECT_TRUE(lossd.guard_intact());
    }
}

TEST_F(CudaLossKernels, SoftmaxLossTrainingMode) {
  const int K = 10, n = 300;
  const std::vector<float> logits = normal(static_cast<size_t>(n) * K, 3.0f);
  std::vector<int32_t> labels(n);
  for (int32_t& y : labels) y = randint(0, K - 1);
  std::vector<float> probs_ref(static_cast<size_t>(n) * K), dz_ref(probs_ref.size()), loss_ref(n), onehot(K);
  std::vector<int32_t> correct_ref(n);
  for (int i = 0; i < n; ++i) {
    std::fill(onehot.begin(), onehot.end(), 0.0f);
    onehot[labels[i]] = 1.0f;
    const float* z = logits.data() + static_cast<size_t>(i) * K;
    loss_ref[i] = loss_forward_backward_one(z, K, onehot.data(), TargetKind::OneHot, labels[i],
                                            LossKind::CrossEntropy, 0.0f, probs_ref.data() + static_cast<size_t>(i) * K,
                                            dz_ref.data() + static_cast<size_t>(i) * K);
    for (int j = 0; j < K; ++j) dz_ref[static_cast<size_t>(i) * K + j] /= static_cast<float>(n);
    correct_ref[i] = static_cast<int>(std::max_element(z, z + K) - z) == labels[i];
  }
  GuardedBuffer<float> zd(logits), probs(probs_ref.size()), dz(dz_ref.size()), lossd(n);
  GuardedBuffer<int32_t> cls(labels), correct(n);
  cuda::SoftmaxLossParams p;
  p.logits = zd.get();
  p.rows = n;
  p.K = K;
  p.target_class = cls.get();
  p.dlogits_divisor = static_cast<float>(n);
  p.probs = probs.get();
  p.loss_out = lossd.get();
  p.dlogits = dz.get();
  p.correct = correct.get();
  cuda::softmax_loss_cuda(p, 0);
  EXPECT_TRUE(all_close("probs", probs.download(), probs_ref, {1e-6, 1e-4}));
  EXPECT_TRUE(all_close("dlogits / n", dz.download(), dz_ref, {1e-6 / n, 1e-4}));
  EXPECT_TRUE(all_close("loss", lossd.download(), loss_ref, {1e-5, 1e-4}));
  EXPECT_TRUE(all_equal("correct", correct.download(), correct_ref));
  EXPECT_TRUE(correct.guard_intact());
}

TEST_F(CudaLossKernels, Softmax) {
  const int K = 10, n = 1000;
  const std::vector<float> logits = normal(static_cast<size_t>(n) * K, 5.0f);
  std::vector<float> ref(logits.size()), onehot(K, 0.0f);
  onehot[0] = 1.0f;
  for (int i = 0; i < n; ++i)
    loss_forward_backward_one(logits.data() + static_cast<size_t>(i) * K, K, onehot.data(), TargetKind::OneHot, 0,
                              LossKind::CrossEntropy, 0.0f, ref.data() + static_cast<size_t>(i) * K, nullptr);
  GuardedBuffer<float> zd(logits), probs(ref.size());
  cuda::softmax_cuda(zd.get(), n, K, probs.get(), 0);
  EXPECT_TRUE(all_close("softmax", probs.download(), ref, {1e-7, 1e-4}));
  EXPECT_TRUE(probs.guard_intact());
}

// TRADES' loss: the kernel calls trades_loss_one, the CPU backend's own function, so the two differ only where the
// device's double exp/log round differently from glibc's (each within 1-2 ulps of double).
TEST_F(CudaKernels, TradesLossMatchesCpu) {
  for (int K : {2, 10, 37})
    for (float beta : {0.0f, 6.0f}) {
      SCOPED_TRACE("K=" + std::to_string(K) + " beta=" + std::to_string(beta));
      const int n = 300;  // three blocks of 128, the last one partly idle
      const float scale = 1.0f / n;
      std::vector<float> logits = normal(static_cast<size_t>(2) * n * K, 3.0f);
      for (int r = 0; r < 2 * n; ++r) {
        float* z = logits.data() + static_cast<size_t>(r) * K;
        const int pick = randint(0, 9);
        if (pick == 0)  // logits of +-1e4 (clean and attacked rows independently): log-sum-exp must stay finite
          for (int j = 0; j < K; ++j) z[j] *= 2500.0f;
        if (pick == 1) z[K - 1] = z[0] = std::max(z[0], z[K - 1]) + 1.0f;  // a tied maximum: the first one counts
      }
      std::vector<int32_t> labels(n);
      for (int32_t& y : labels) y = randint(0, K - 1);

      std::vector<float> dz_ref(logits.size()), ce_ref(n), kl_ref(n);
      std::vector<int32_t> clean_ref(n), adv_ref(n);
      // Per-element atol: both sides evaluate the same double expressions, whose results differ by a few ulps of
      // double (2^-52 ~ 2.2e-16) of the magnitudes that enter them (the logits and their log-sum-exps, up to ~1e4
      // here, and KL), tens of operations deep; 1e-13 of those magnitudes is ~10x that, and still ~1e-4 of a float
      // ulp of the gradients. Then each side rounds to float once, so results a rounding boundary apart differ by
      // one float ulp: rtol 2^-23.
      std::vector<double> dz_atol(logits.size()), ce_atol(n), kl_atol(n);
      for (int i = 0; i < n; ++i) {
        const float* z = logits.data() + static_cast<size_t>(i) * K;
        const float* za = logits.data() + static_cast<size_t>(n + i) * K;
        float* dz = dz_ref.data() + static_cast<size_t>(i) * K;
        float* dza = dz_ref.data() + static_cast<size_t>(n + i) * K;
        const TradesTerms t = trades_loss_one(z, za, K, labels[i], beta, scale, dz, dza);
        ce_ref[i] = static_cast<float>(t.ce);
        kl_ref[i] = static_cast<float>(t.kl);
        clean_ref[i] = static_cast<int>(std::max_element(z, z + K) - z) == labels[i];
        adv_ref[i] = static_cast<int>(std::max_element(za, za + K) - za) == labels[i];
        const double lse = log_sum_exp(z, K), lsea = log_sum_exp(za, K);
        double mag = 0;
        for (int j = 0; j < K; ++j) mag = std::max(mag, static_cast<double>(std::fabs(z[j]) + std::fabs(za[j])));
        mag += std::fabs(lse) + std::fabs(lsea) + std::fabs(t.kl) + 1.0;
        for (int j = 0; j < K; ++j) {
          dz_atol[static_cast<size_t>(i) * K + j] = 1e-13 * scale * (1.0 + beta * mag);
          dz_atol[static_cast<size_t>(n + i) * K + j] = 1e-13 * scale * (1.0 + beta);
        }
        ce_atol[i] = 1e-13 * (std::fabs(lse) + std::fabs(z[labels[i]]) + 1.0);
        kl_atol[i] = 1e-13 * mag;
      }

      GuardedBuffer<float> zd(logits), dzd(logits.size()), ced(n), kld(n);
      GuardedBuffer<int32_t> yd(labels), clean(n), adv(n);
      cuda::TradesLossParams p;
      p.logits = zd.get();
      p.labels = yd.get();
      p.n = n;
      p.K = K;
      p.beta = beta;
      p.scale = scale;
      p.dlogits = dzd.get();
      p.ce = ced.get();
      p.kl = kld.get();
      p.clean_correct = clean.get();
      p.adv_correct = adv.get();
      cuda::trades_loss_cuda(p, 0);
      const double rtol = 2.0 * kUlp;
      EXPECT_TRUE(all_close("dlogits", dzd.download(), dz_ref, {0, rtol}, &dz_atol));
      EXPECT_TRUE(all_close("ce", ced.download(), ce_ref, {0, rtol}, &ce_atol));
      EXPECT_TRUE(all_close("kl", kld.download(), kl_ref, {0, rtol}, &kl_atol));
      // Comparisons only, the first maximum as std::max_element (the CPU backend's): exact.
      EXPECT_TRUE(all_equal("clean correct", clean.download(), clean_ref));
      EXPECT_TRUE(all_equal("adv correct", adv.download(), adv_ref));
      EXPECT_TRUE(dzd.guard_intact());
      EXPECT_TRUE(ced.guard_intact());
      EXPECT_TRUE(kld.guard_intact());
      EXPECT_TRUE(clean.guard_intact());
      EXPECT_TRUE(adv.guard_intact());
    }
  cuda::TradesLossParams bad;  // K = 1 has no KL to speak of: the launcher refuses it before touching any buffer
  bad.n = 1;
  bad.K = 1;
  EXPECT_ANY_THROW(cuda::trades_loss_cuda(bad, 0));
}

#endif  // NUDGE_HAVE_CUDA

}  // namespace
}  // namespace nudge
