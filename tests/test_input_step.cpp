// The CPU input update and projection (input_update_one, project_one in host/core/optimize_math.h): every optimizer
// and norm keeps pixels in [0, 1] and inside the eps-ball, to a stated rounding slack; points far outside the ball
// are projected onto it; and the first step of each optimizer has the size its rule gives.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "optimize_math.h"
#include "optimize_types.h"
#include "reference_math.h"

namespace nudge {
namespace {

// ---- input update and projection ------------------------------------------------------------------------------

// ||x - x0|| in double, L2 and Linf.
double l2_dist(const std::vector<float>& x, const std::vector<float>& x0) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += (static_cast<double>(x[i]) - x0[i]) * (static_cast<double>(x[i]) - x0[i]);
  return std::sqrt(s);
}
double linf_dist(const std::vector<float>& x, const std::vector<float>& x0) {
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(x[i]) - x0[i]));
  return m;
}

// The projection is computed in float: x0 + clip(...) and x0 + d*(eps/len) round to the float grid, which can leave
// a point outside the exact ball by a rounding error. Measured worst overshoot over the cases below (D up to 1000,
// eps up to 2): Linf 3.0e-8 (half an ulp of the pixel values), L2 1.1e-8. The bounds: one ulp of 1 for Linf; for L2
// 1e-7 plus 1e-7 of eps (the rounding of the scale factor eps/len enters relative to eps).
constexpr double kLinfSlack = 1.2e-7;
double l2_slack(double eps) { return 1e-7 * (1 + eps); }

TEST(InputStep, UpdatesStayInUnitIntervalAndBall) {
  std::mt19937 rng(9300);
  std::uniform_real_distribution<float> u01(0, 1);
  double worst_linf = 0, worst_l2 = 0;
  for (InputOptimizer opt : {InputOptimizer::Adam, InputOptimizer::Sgd, InputOptimizer::Sign}) {
    for (Norm norm : {Norm::None, Norm::Linf, Norm::L2}) {
      for (int trial = 0; trial < 20; ++trial) {
        const int D = 1 + static_cast<int>(rng() % 800);
        const float eps = norm == Norm::L2 ? 3.0f * u01(rng) : 0.5f * u01(rng);
        StepConfig cfg;
        cfg.optimizer = opt;
        cfg.norm = norm;
        cfg.lr = 0.5f * u01(rng);
        std::vector<float> x0 = ref::random_uniform(D, 0, 1, rng());
        // Some pixels on the box edges, where the clamp must hold them.
        x0[0] = 0.0f;
        if (D > 1) x0[1] = 1.0f;
        std::vector<float> x = x0, m(D, 0.0f), v(D, 0.0f);
        for (int t = 1; t <= 5; ++t) {
          const auto g = ref::random_uniform(D, -10, 10, rng());
          input_update_one(x.data(), g.data(), m.data(), v.data(), t, x0.data(), D, eps, cfg);
          for (int i = 0; i < D; ++i)
            ASSERT_TRUE(x[i] >= 0.0f && x[i] <= 1.0f) << "pixel " << i << " = " << x[i] << " after step " << t;
          if (norm == Norm::Linf) {
            worst_linf = std::max(worst_linf, linf_dist(x, x0) - eps);
            ASSERT_LE(linf_dist(x, x0), eps + kLinfSlack) << "step " << t << ", eps " << eps;
          }
          if (norm == Norm::L2) {
            worst_l2 = std::max(worst_l2, l2_dist(x, x0) - eps);
            ASSERT_LE(l2_dist(x, x0), eps + l2_slack(eps)) << "step " << t << ", eps " << eps << ", D " << D;
          }
        }
      }
    }
  }
  if (std::getenv("NUDGE_PRINT_ERRORS"))
    std::printf("[errors] worst overshoot: Linf %.3g absolute, L2 %.3g absolute\n", worst_linf, worst_l2);
}

TEST(InputStep, ProjectionOfFarPoints) {
  std::mt19937 rng(9400);
  double worst_linf = 0, worst_l2 = 0;
  std::uniform_real_distribution<float> u01(0, 1);
  for (int trial = 0; trial < 200; ++trial) {
    const int D = 1 + static_cast<int>(rng() % 1000);
    const float eps = trial % 10 == 0 ? 0.0f : 2.0f * u01(rng);
    const Norm norm = trial % 2 ? Norm::Linf : Norm::L2;
    const auto x0 = ref::random_uniform(D, 0, 1, rng());
    auto x = ref::random_uniform(D, -3, 4, rng());
    project_one(x.data(), x0.data(), D, eps, norm);
    for (int i = 0; i < D; ++i) ASSERT_TRUE(x[i] >= 0.0f && x[i] <= 1.0f) << "pixel " << i << " = " << x[i];
    if (norm == Norm::Linf) {
      worst_linf = std::max(worst_linf, linf_dist(x, x0) - eps);
      ASSERT_LE(linf_dist(x, x0), eps + kLinfSlack) << "eps " << eps;
    } else {
      worst_l2 = std::max(worst_l2, l2_dist(x, x0) - eps);
      ASSERT_LE(l2_dist(x, x0), eps + l2_slack(eps)) << "eps " << eps << ", D " << D;
    }
  }
  if (std::getenv("NUDGE_PRINT_ERRORS"))
    std::printf("[errors] worst overshoot: Linf %.3g absolute, L2 %.3g absolute\n", worst_linf, worst_l2);
  // Points already inside the ball (and the box) are left exactly as they are.
  const auto x0 = ref::random_uniform(100, 0.2f, 0.8f, 9401);
  auto x = x0;
  for (int i = 0; i < 100; ++i) x[i] += 0.001f * ((i % 3) - 1);
  for (Norm norm : {Norm::Linf, Norm::L2, Norm::None}) {
    auto y = x;
    project_one(y.data(), x0.data(), 100, 0.1f, norm);
    EXPECT_EQ(y, x) << to_string(norm);
  }
}

// Adam's first step: mhat = g and vhat = g^2 exactly, so each pixel moves by lr * g / (|g| + adam_eps), i.e.
// lr * sign(g) up to adam_eps / |g| (<= 1e-4 here). Sign moves by exactly lr; SGD by lr * g.
TEST(InputStep, FirstStepSizes) {
  const int D = 500;
  const auto x0 = ref::random_uniform(D, 0.25f, 0.75f, 9500);
  auto g = ref::random_uniform(D, -10, 10, 9501);
  for (int i = 0; i < D; ++i)
    if (std::fabs(g[i]) < 1e-3f) g[i] = 1e-3f;
  g[0] = 0.0f;  // no gradient, no move (for every optimizer)
  StepConfig cfg;
  cfg.lr = 0.01f;
  for (InputOptimizer opt : {InputOptimizer::Adam, InputOptimizer::Sign, InputOptimizer::Sgd}) {
    SCOPED_TRACE(to_string(opt));
    cfg.optimizer = opt;
    auto x = x0;
    std::vector<float> m(D, 0.0f), v(D, 0.0f);
    cfg.lr = opt == InputOptimizer::Sgd ? 0.001f : 0.01f;
    input_update_one(x.data(), g.data(), m.data(), v.data(), 1, x0.data(), D, 0.0f, cfg);
    for (int i = 0; i < D; ++i) {
      const double sign = (g[i] > 0) - (g[i] < 0);
      const double expect = opt == InputOptimizer::Sgd ? x0[i] - static_cast<double>(cfg.lr) * g[i]
                                                       : x0[i] - cfg.lr * sign;
      ASSERT_NEAR(x[i], expect, cfg.lr * 1e-4 + 1e-7) << "pixel " << i << ", g = " << g[i];
    }
    if (opt == InputOptimizer::Adam) {
      for (int i = 0; i < D; ++i) {
        ASSERT_NEAR(m[i], 0.1f * g[i], 1e-6f * std::fabs(g[i]));
        ASSERT_NEAR(v[i], 0.001f * g[i] * g[i], 1e-6f * g[i] * g[i] + 1e-12f);
      }
    }
  }
}

}  // namespace
}  // namespace nudge
