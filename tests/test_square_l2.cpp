// Square in L2 (attack_square_l2.cpp): the window side rule, the bump and the two-halved pattern against the paper's
// formula on hand-worked cases, every candidate inside the L2 ball and [0,1], query accounting, results that do
// not depend on chunking, and that it breaks the plain model where a random L2 perturbation of the same size does not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "attack_points.h"
#include "attacks.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "mnist.h"
#include "model.h"
#include "robustness.h"
#include "square_search.h"

namespace nudge {
namespace {

using testing_support::attack_set;
using testing_support::first_test_points;
using testing_support::Points;
const std::string kModel = NUDGE_SOURCE_DIR "/data/models/mnist_cnn.safetensors";

TEST(SquareL2, WindowSideIsOddAtLeastThreeAndFits) {
  EXPECT_EQ(square_l2_side(0.8, 28, 28), 25);        // round(sqrt(627.2)) = 25, odd already
  EXPECT_EQ(square_l2_side(0.4, 28, 28), 19);        // round(17.71) = 18, made odd
  EXPECT_EQ(square_l2_side(0.8 / 512, 28, 28), 3);   // round(1.1) = 1, raised to 3
  EXPECT_EQ(square_l2_side(1.0, 28, 28), 27);        // 28 -> 29 exceeds 27 = H - 1
  EXPECT_EQ(square_l2_side(1.0, 6, 6), 5);
  EXPECT_EQ(square_l2_side(1.0, 7, 7), 5);           // cap 6 is even: 5
}

TEST(Square, WindowCornersNeverTouchTheLastRowOrColumn) {
  // 28 - 25 = 3 positions, 0, 1, 2 (AutoAttack's range), for either norm.
  EXPECT_EQ(square_corner(0.0f, 28, 25), 0);
  EXPECT_EQ(square_corner(0.34f, 28, 25), 1);
  EXPECT_EQ(square_corner(0.99999994f, 28, 25), 2);
  EXPECT_EQ(square_corner(0.99999994f, 28, 27), 0);
  std::vector<int> seen(26, 0);
  for (int i = 0; i < 2600; ++i) ++seen[square_corner((i + 0.5f) / 2600, 28, 3)];
  for (int c = 0; c < 25; ++c) EXPECT_EQ(seen[c], 104) << "corner " << c;
  EXPECT_EQ(seen[25], 0);
}

TEST(SquareL2, BumpFollowsTheRingFormula) {
  // 2 x 5: centre (1, 2), rings 0..2 (M = max(1, 2) + 1 = 3). Distance 0: 1 + 1/4 + 1/9; 1: 1/4 + 1/9; 2: 1/9.
  const std::vector<double> b = square_bump(2, 5);
  const double d0 = 1 + 0.25 + 1.0 / 9, d1 = 0.25 + 1.0 / 9, d2 = 1.0 / 9;
  const std::vector<double> expect{d2, d1, d1, d1, d2,
                                   d2, d1, d0, d1, d2};
  ASSERT_EQ(b.size(), expect.size());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(b[i], expect[i], 1e-15) << "pixel " << i;
  // 3 x 3: M = 2; centre 1 + 1/4, the rest 1/4.
  const std::vector<double> c = square_bump(3, 3);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], i == 4 ? 1.25 : 0.25, 1e-15) << "pixel " << i;
}

TEST(SquareL2, PatternHasUnitNormAndOppositeHalves) {
  for (int s : {3, 5, 25}) {
    const std::vector<double> p = square_l2_pattern(s, false), t = square_l2_pattern(s, true);
    double n2 = 0;
    for (double v : p) n2 += v * v;
    EXPECT_NEAR(n2, 1.0, 1e-12) << "s = " << s;
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) {
        const double v = p[static_cast<size_t>(i) * s + j];
        if (i < s / 2) EXPECT_GT(v, 0) << s << " " << i << " " << j;
        else EXPECT_LT(v, 0) << s << " " << i << " " << j;
        EXPECT_EQ(t[static_cast<size_t>(j) * s + i], v);
      }
    // Each half holds half the squared norm, although the lower one is a row taller for odd s.
    double up2 = 0;
    for (int q = 0; q < (s / 2) * s; ++q) up2 += p[q] * p[q];
    EXPECT_NEAR(up2, 0.5, 1e-12) << "s = " << s;
    // The lower half is the bump of its own rectangle, negated: the same shape, peak at its centre.
    const std::vector<double> down = square_bump(s - s / 2, s);
    const double ratio = p[static_cast<size_t>(s - 1) * s] / down[static_cast<size_t>(s - s / 2 - 1) * s];
    for (int i = s / 2; i < s; ++i)
      for (int j = 0; j < s; ++j)
        EXPECT_NEAR(p[static_cast<size_t>(i) * s + j], ratio * down[static_cast<size_t>(i - s / 2) * s + j], 1e-12);
  }
}

// Checks every image the attack forwards against its entry's ball and the box, and counts them.
class WatchingBackend : public testing_support::DelegatingBackend {
 public:
  // The entries' clean images.
  explicit WatchingBackend(std::vector<float> x0) : x0_(std::move(x0)) {}
  void logit_backprop(const float* x, int n, const LogitGradient& f, float* g) override {
    for (int i = 0; i < n; ++i) {
      const float* xi = x + static_cast<size_t>(i) * 784;
      double best = 1e30;
      // Which entry the row belongs to is not passed down; the nearest clean image is it (the points are far apart).
      for (size_t k = 0; k < x0_.size() / 784; ++k) {
        double d2 = 0;
        for (int q = 0; q < 784; ++q) {
          const double d = xi[q] - x0_[k * 784 + q];
          d2 += d * d;
        }
        best = std::min(best, d2);
      }
      worst_norm = std::max(worst_norm, std::sqrt(best));
      for (int q = 0; q < 784; ++q) out_of_box += xi[q] < 0.0f || xi[q] > 1.0f || std::isnan(xi[q]);
    }
    rows += n;
    DelegatingBackend::logit_backprop(x, n, f, g);
  }
  long rows = 0, out_of_box = 0;
  double worst_norm = 0;

 private:
  std::vector<float> x0_;
};

TEST(SquareL2, EveryCandidateStaysInTheBallAndTheBoxAndEveryQueryIsCounted) {
  REQUIRE_MNIST();
  const Points p = first_test_points(4);
  const float eps = 1e-3f;  // far too small to flip the reference model, so every query is spent
  const AttackSet set = attack_set(p, 4, eps, Norm::L2);
  WatchingBackend backend(set.x0);
  backend.load_model(Model::load(kModel));
  AttackRecord rec;
  rec.resize(4, 784);
  SquareConfig cfg;
  cfg.queries = 41;
  const long spent = run_square(backend, set, {0, 1, 2, 3}, cfg, 28, 28, 1, rec);
  EXPECT_EQ(spent, 4 * 41);
  EXPECT_EQ(backend.rows, 4 * 41);
  EXPECT_EQ(backend.out_of_box, 0);
  // The perturbation is rescaled to eps before the box clip, which only shortens it; float rounding of x0 + nu.
  EXPECT_LE(backend.worst_norm, eps * (1 + 1e-3));
  EXPECT_GT(backend.worst_norm, eps * 0.5);  // it does use the ball
  for (int e = 0; e < 4; ++e) EXPECT_FALSE(rec.broken[e]);
}

TEST(SquareL2, BreaksThePlainModelWhereItsStartAloneDoesNot) {
  REQUIRE_MNIST();
  const int n = 16;
  const Points p = first_test_points(n);
  const float eps = 2.5f;
  const AttackSet set = attack_set(p, n, eps, Norm::L2);
  WatchingBackend backend(set.x0);
  backend.load_model(Model::load(kModel));
  std::vector<int> todo(n);
  for (int i = 0; i < n; ++i) todo[i] = i;
  SquareConfig one;
  one.queries = 1;  // the start alone: the grid of bumps at norm eps
  AttackRecord start;
  start.resize(n, 784);
  run_square(backend, set, todo, one, 28, 28, 1, start);
  SquareConfig cfg;
  cfg.queries = 300;
  AttackRecord rec;
  rec.resize(n, 784);
  run_square(backend, set, todo, cfg, 28, 28, 1, rec);
  int broken_start = 0, broken = 0;
  for (int e = 0; e < n; ++e) {
    broken_start += start.broken[e];
    broken += rec.broken[e];
  }
  EXPECT_EQ(backend.out_of_box, 0);
  EXPECT_LE(backend.worst_norm, eps * (1 + 1e-5));
  // Every reported example passes the cascade's re-check: in the ball, in [0,1], misclassified by a fresh forward.
  EXPECT_NO_THROW(recheck_adversarial(backend, set, rec));
  std::printf("L2 eps %.1f, 16 points: the start breaks %d, 300 queries break %d\n", eps, broken_start, broken);
  EXPECT_GE(broken, broken_start + 4);
}

TEST(SquareL2, ResultsDoNotDependOnChunks) {
  REQUIRE_MNIST();
  const int n = 6;
  const Points p = first_test_points(n);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  RobustnessConfig whole;
  whole.eps = {2.5f, 3.5f};
  whole.norm = Norm::L2;
  whole.attacks = {AttackId::Square};
  whole.square.queries = 150;
  whole.seed = 3;
  whole.progress = false;
  const RobustnessResult a = evaluate_robustness(*backend, p.x.data(), p.y.data(), n, 28, 28, 10, whole);
  RobustnessConfig chunked = whole;
  chunked.chunk = 4;
  chunked.square.chunk = 3;
  const RobustnessResult b = evaluate_robustness(*backend, p.x.data(), p.y.data(), n, 28, 28, 10, chunked);
  ASSERT_EQ(a.robust.size(), b.robust.size());
  int broke = 0;
  for (size_t e = 0; e < a.robust.size(); ++e) {
    EXPECT_EQ(a.robust[e], b.robust[e]) << "entry " << e;
    EXPECT_EQ(a.step[e], b.step[e]) << "entry " << e;
    broke += a.attack[e] != 0;
  }
  EXPECT_EQ(a.images, b.images);
  EXPECT_GT(broke, 0);  // the comparison covers broken entries, not only untouched images
}

}  // namespace
}  // namespace nudge
