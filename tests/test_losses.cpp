// The losses of host/core/optimize_math.h (loss_forward_backward_one, goal_met, kl_divergence) against their double
// formulas (tests/support/reference_math.h): value, probabilities and the gradient by central differences for every
// loss and target kind (tests/support/loss_cases.h) and K up to 100; logits of +-1e4 stay finite; KL of the softmax
// itself is zero; the cross-entropy gradient is p - t with zeros in the target; Carlini-Wagner's margin and kappa;
// each target kind's goal test.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "loss_cases.h"
#include "optimize_math.h"
#include "optimize_types.h"
#include "reference_math.h"

namespace nudge {
namespace {

using testing_support::kLossCases;
using testing_support::LossCase;

// ---- losses ---------------------------------------------------------------------------------------------------

// d loss / d logits of the double loss by central differences; *crossed is set if +-h changes the piece.
std::vector<double> fd_dlogits(const std::vector<double>& z, const std::vector<double>& t, TargetKind kind, int cls,
                               LossKind loss, double kappa, double h, bool* crossed) {
  const int K = static_cast<int>(z.size());
  int b0 = 0, bp = 0, bm = 0;
  ref::loss_one(z.data(), K, t.data(), kind, cls, loss, kappa, &b0);
  std::vector<double> g(K), zz = z;
  *crossed = false;
  for (int j = 0; j < K; ++j) {
    zz[j] = z[j] + h;
    const double lp = ref::loss_one(zz.data(), K, t.data(), kind, cls, loss, kappa, &bp);
    zz[j] = z[j] - h;
    const double lm = ref::loss_one(zz.data(), K, t.data(), kind, cls, loss, kappa, &bm);
    zz[j] = z[j];
    *crossed |= bp != b0 || bm != b0;
    g[j] = (lp - lm) / (2 * h);
  }
  return g;
}

struct LossOut {
  float loss;
  std::vector<float> probs, dz;
};

LossOut run_loss(const std::vector<float>& z, const std::vector<float>& t, TargetKind kind, int cls, LossKind loss,
                 float kappa) {
  const int K = static_cast<int>(z.size());
  LossOut o;
  o.probs.assign(K, std::numeric_limits<float>::quiet_NaN());
  o.dz.assign(K, std::numeric_limits<float>::quiet_NaN());
  o.loss = loss_forward_backward_one(z.data(), K, t.data(), kind, cls, loss, kappa, o.probs.data(), o.dz.data());
  return o;
}

void expect_all_finite(const LossOut& o, const std::string& what) {
  EXPECT_TRUE(std::isfinite(o.loss)) << what << ": loss " << o.loss;
  for (size_t j = 0; j < o.dz.size(); ++j) {
    EXPECT_TRUE(std::isfinite(o.dz[j])) << what << ": dlogits[" << j << "] = " << o.dz[j];
    EXPECT_TRUE(std::isfinite(o.probs[j])) << what << ": probs[" << j << "] = " << o.probs[j];
  }
}

std::vector<float> soft_target(int K, uint32_t seed, int zero_at) {
  auto t = ref::random_uniform(K, 0.05f, 1.0f, seed);
  t[zero_at] = 0.0f;
  const float s = std::accumulate(t.begin(), t.end(), 0.0f);
  for (float& v : t) v /= s;
  return t;
}

// Every (loss, target kind) against the double formulas: value, probabilities and the gradient by differences.
// K = 100 takes the untargeted loss's path for more than 64 classes. Measured: loss abs err <= 2.9e-7, dlogits
// abs err <= 3e-8.
TEST(Losses, MatchReferenceOnRandomLogits) {
  uint32_t seed = 9000;
  for (int K : {2, 3, 10, 100}) {
    for (const LossCase& lc : kLossCases) {
      const std::string name = std::string(lc.name) + " K=" + std::to_string(K);
      SCOPED_TRACE(name);
      const auto z = ref::random_uniform(K, -4, 4, ++seed);
      const int cls = static_cast<int>(seed % K);
      std::vector<float> t(K, 0.0f);
      if (lc.kind == TargetKind::OneHot) t[cls] = 1.0f;
      if (lc.kind == TargetKind::Soft) t = soft_target(K, ++seed, (cls + 1) % K);
      const LossOut o = run_loss(z, t, lc.kind, cls, lc.loss, lc.kappa);
      const auto zd = ref::to_double(z), td = ref::to_double(t);
      const double l = ref::loss_one(zd.data(), K, td.data(), lc.kind, cls, lc.loss, lc.kappa);
      ref::expect_close(&o.loss, &l, 1, 1e-6, 1e-6, name + " loss");
      ref::expect_close(o.probs, ref::softmax(zd.data(), K), 1e-6, 1e-8, name + " probs");
      bool crossed = false;
      const auto g = fd_dlogits(zd, td, lc.kind, cls, lc.loss, lc.kappa, 1e-6, &crossed);
      ASSERT_FALSE(crossed);
      ref::expect_close(o.dz, g, 1e-5, 1e-6, name + " dlogits");
    }
  }
}

// Logits of +-1e4: log-sum-exp keeps every loss and gradient finite and on the double formula. The float loss is
// assembled from float log-sum-exps of size 1e4 (ulp 1e-3), so it is only good to about an ulp of 1e4 in absolute
// terms: measured max abs err 8.4e-4 (untargeted CE with the label on top, loss 0.71); the bound is 4e-3.
TEST(Losses, HugeLogitsStayFinite) {
  const int K = 10;
  std::vector<float> z = {1e4f, -1e4f, 0.0f, 1e4f - 1.0f, -1e4f, 3.0f, -1e4f + 2.0f, 1e4f - 0.5f, -5.0f, 1e4f - 30.0f};
  std::vector<float> onehot_top(K, 0.0f), onehot_bottom(K, 0.0f);
  onehot_top[0] = 1;
  onehot_bottom[1] = 1;
  // Weight on the top logits and zeros exactly where logits are -1e4 (so 0 * log p must be taken as 0).
  std::vector<float> soft_zeros = {0.3f, 0.0f, 0.1f, 0.2f, 0.0f, 0.1f, 0.0f, 0.2f, 0.1f, 0.0f};
  // Weight on the -1e4 logits too: a loss of ~2e4, still finite.
  std::vector<float> soft_far = {0.1f, 0.2f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.05f, 0.05f};
  const std::vector<float> none(K, 0.0f);
  struct Case {
    const char* name;
    const std::vector<float>* t;
    TargetKind kind;
    int cls;
    LossKind loss;
  };
  const Case cases[] = {
      {"ce one-hot at the top", &onehot_top, TargetKind::OneHot, 0, LossKind::CrossEntropy},
      {"ce one-hot at -1e4", &onehot_bottom, TargetKind::OneHot, 1, LossKind::CrossEntropy},
      {"ce soft with zeros", &soft_zeros, TargetKind::Soft, 0, LossKind::CrossEntropy},
      {"kl soft with zeros", &soft_zeros, TargetKind::Soft, 0, LossKind::KL},
      {"kl soft on -1e4 logits", &soft_far, TargetKind::Soft, 0, LossKind::KL},
      {"untargeted ce, label on top", &none, TargetKind::Untargeted, 0, LossKind::CrossEntropy},
      {"untargeted ce, label at -1e4", &none, TargetKind::Untargeted, 1, LossKind::CrossEntropy},
      {"untargeted kl, label on top", &none, TargetKind::Untargeted, 0, LossKind::KL},
      {"cw one-hot", &onehot_bottom, TargetKind::OneHot, 1, LossKind::CarliniWagner},
      {"cw untargeted", &none, TargetKind::Untargeted, 0, LossKind::CarliniWagner},
  };
  const auto zd = ref::to_double(z);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const LossOut o = run_loss(z, *c.t, c.kind, c.cls, c.loss, 0.0f);
    expect_all_finite(o, c.name);
    EXPECT_NEAR(std::accumulate(o.probs.begin(), o.probs.end(), 0.0), 1.0, 1e-6);
    const auto td = ref::to_double(*c.t);
    const double l = ref::loss_one(zd.data(), K, td.data(), c.kind, c.cls, c.loss, 0.0);
    ref::expect_close(&o.loss, &l, 1, 1e-6, 4e-3, std::string(c.name) + " loss");
    bool crossed = false;
    const auto g = fd_dlogits(zd, td, c.kind, c.cls, c.loss, 0.0, 1e-3, &crossed);
    ASSERT_FALSE(crossed);
    ref::expect_close(o.dz, g, 1e-5, 1e-6, std::string(c.name) + " dlogits");
  }
}

TEST(Losses, KlOfTheSoftmaxItselfIsZero) {
  for (uint32_t seed : {9100u, 9101u, 9102u}) {
    const int K = 10;
    const auto z = ref::random_uniform(K, -5, 5, seed);
    std::vector<float> p(K);
    loss_forward_backward_one(z.data(), K, std::vector<float>(K, 0.1f).data(), TargetKind::Soft,
                              0, LossKind::KL, 0, p.data(), nullptr);
    const LossOut o = run_loss(z, p, TargetKind::Soft, 0, LossKind::KL, 0);
    EXPECT_NEAR(o.loss, 0.0f, 1e-6);
    for (int j = 0; j < K; ++j) EXPECT_NEAR(o.dz[j], 0.0f, 1e-7) << "j=" << j;
    EXPECT_NEAR(kl_divergence(p.data(), o.probs.data(), K), 0.0f, 1e-6);
    // Cross-entropy to the same target is its entropy: the two losses differ exactly by H(t).
    const LossOut ce = run_loss(z, p, TargetKind::Soft, 0, LossKind::CrossEntropy, 0);
    double entropy = 0;
    for (float v : p) entropy -= v * std::log(static_cast<double>(v));
    EXPECT_NEAR(ce.loss, entropy, 1e-5);
  }
}

TEST(Losses, CrossEntropyGradientIsPMinusTWithZerosInTarget) {
  const int K = 7;
  const auto z = ref::random_uniform(K, -3, 3, 9200);
  for (const auto& t : {std::vector<float>{0, 0, 1, 0, 0, 0, 0}, soft_target(K, 9201, 4),
                        std::vector<float>{0.5f, 0, 0, 0, 0.5f, 0, 0}}) {
    for (LossKind loss : {LossKind::CrossEntropy, LossKind::KL}) {
      const LossOut o = run_loss(z, t, TargetKind::Soft, 0, loss, 0);
      double expect_loss = 0;
      for (int j = 0; j < K; ++j) {
        EXPECT_NEAR(o.dz[j], o.probs[j] - t[j], 2e-7) << "j=" << j << " t_j=" << t[j];
        if (t[j] > 0)
          expect_loss -= t[j] * (std::log(static_cast<double>(o.probs[j])) -
                                 (loss == LossKind::KL ? std::log(static_cast<double>(t[j])) : 0.0));
      }
      EXPECT_NEAR(o.loss, expect_loss, 1e-5);
    }
  }
}

TEST(Losses, CarliniWagnerMarginAndKappa) {
  const std::vector<float> z = {1, 3, 2, -1};
  const std::vector<float> none(4, 0.0f);
  // Targeted at class 0: margin = max_{j!=0} z_j - z_0 = 3 - 1 = 2, gradient +1 on the best other, -1 on the target.
  LossOut o = run_loss(z, none, TargetKind::OneHot, 0, LossKind::CarliniWagner, 0);
  EXPECT_FLOAT_EQ(o.loss, 2.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{-1, 1, 0, 0}));
  // Targeted at the top class 1: margin 2 - 3 = -1; beyond kappa = 0.5 the loss is -kappa and the gradient zero.
  o = run_loss(z, none, TargetKind::OneHot, 1, LossKind::CarliniWagner, 0.5f);
  EXPECT_FLOAT_EQ(o.loss, -0.5f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 0, 0, 0}));
  // ...and within kappa = 2 it is the margin, still active.
  o = run_loss(z, none, TargetKind::OneHot, 1, LossKind::CarliniWagner, 2.0f);
  EXPECT_FLOAT_EQ(o.loss, -1.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, -1, 1, 0}));
  // Exactly at -kappa the hinge is flat.
  o = run_loss(z, none, TargetKind::OneHot, 1, LossKind::CarliniWagner, 1.0f);
  EXPECT_FLOAT_EQ(o.loss, -1.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 0, 0, 0}));
  // Untargeted, true label 1 (on top): margin = z_1 - max_{j!=1} z_j = 1, pushing z_1 down and z_2 up.
  o = run_loss(z, none, TargetKind::Untargeted, 1, LossKind::CarliniWagner, 0);
  EXPECT_FLOAT_EQ(o.loss, 1.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 1, -1, 0}));
  // Untargeted, label 3 already far below: margin -4 < -kappa = -3, so -3 and no gradient.
  o = run_loss(z, none, TargetKind::Untargeted, 3, LossKind::CarliniWagner, 3.0f);
  EXPECT_FLOAT_EQ(o.loss, -3.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 0, 0, 0}));
  // The probabilities are written whatever the loss.
  EXPECT_NEAR(std::accumulate(o.probs.begin(), o.probs.end(), 0.0), 1.0, 1e-6);
}

TEST(Losses, GoalMetForEachTargetKind) {
  const std::vector<float> p = {0.1f, 0.6f, 0.25f, 0.05f};
  const std::vector<float> none(4, 0.0f);
  StepConfig cfg;
  cfg.stop_prob = 0;
  // One-hot: argmax reaches the target, or p[target] >= stop_prob when that is set.
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 1, cfg));
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 2, cfg));
  cfg.stop_prob = 0.6f;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 1, cfg));
  cfg.stop_prob = 0.7f;
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 1, cfg));
  cfg.stop_prob = 0.2f;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 2, cfg)) << "p = 0.25 >= 0.2 without argmax";
  // Untargeted: the argmax leaves the label, and p[label] <= 1 - stop_prob when that is set.
  cfg.stop_prob = 0;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 0, cfg));
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 1, cfg));
  cfg.stop_prob = 0.85f;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 0, cfg)) << "0.1 <= 0.15";
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 2, cfg)) << "0.25 > 0.15";
  // Soft: KL(target || p) <= stop_kl.
  cfg = StepConfig{};
  EXPECT_TRUE(goal_met(p.data(), 4, p.data(), TargetKind::Soft, 0, cfg));
  const std::vector<float> t = {0.25f, 0.25f, 0.25f, 0.25f};
  const float kl = kl_divergence(t.data(), p.data(), 4);
  cfg.stop_kl = kl * 1.01f;
  EXPECT_TRUE(goal_met(p.data(), 4, t.data(), TargetKind::Soft, 0, cfg));
  cfg.stop_kl = kl * 0.99f;
  EXPECT_FALSE(goal_met(p.data(), 4, t.data(), TargetKind::Soft, 0, cfg));
  // A target with zeros where p is tiny: those terms are 0, not NaN.
  const std::vector<float> t0 = {0.0f, 1.0f, 0.0f, 0.0f};
  const std::vector<float> p0 = {0.0f, 1.0f, 0.0f, 0.0f};
  cfg.stop_kl = 1e-6f;
  EXPECT_TRUE(goal_met(p0.data(), 4, t0.data(), TargetKind::Soft, 1, cfg));
}

}  // namespace
}  // namespace nudge
