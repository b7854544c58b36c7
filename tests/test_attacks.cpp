// The robustness attacks and their cascade: APGD's checkpoint schedule and step-halving rule against the paper's
// formulas, the attack losses' gradients against central differences, Square's schedule and query accounting, the
// cascade's bookkeeping (a broken point is never attacked again), invariance to chunking and to the eps sweep, and the
// re-check that refuses a planted bad example.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "optimize_math.h"
#include "attack_points.h"
#include "attacks.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "errors.h"
#include "mnist.h"
#include "model.h"
#include "robustness.h"

namespace nudge {
namespace {

using testing_support::attack_set;
using testing_support::first_test_points;
using testing_support::Points;
const std::string kModel = NUDGE_SOURCE_DIR "/data/models/mnist_cnn.safetensors";

TEST(Apgd, CheckpointsFollowThePapersFormula) {
  for (int N : {100, 1000, 250}) {
    // p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), checkpoints at ceil(p_j N) while
    // p_j <= 1 (N = 250 gives 55, 103, 143, 175, 200, 218, 233, 248).
    std::vector<int> expect;
    double prev = 0, p = 0.22;
    while (p <= 1.0 + 1e-9) {
      expect.push_back(static_cast<int>(std::ceil(p * N - 1e-9)));
      const double next = p + std::max(p - prev - 0.03, 0.06);
      prev = p;
      p = next;
    }
    EXPECT_EQ(apgd_checkpoints(N), expect) << "N = " << N;
  }
  EXPECT_EQ(apgd_checkpoints(100), (std::vector<int>{22, 41, 57, 70, 80, 87, 93, 99}));
  EXPECT_EQ(apgd_checkpoints(250), (std::vector<int>{55, 103, 143, 175, 200, 218, 233, 248}));
}

TEST(Apgd, StepHalvesOnOscillationOrStall) {
  // 19 steps since the last checkpoint, rho 0.75: the loss must have risen in at least 14.25 of them.
  EXPECT_TRUE(apgd_halve_step(14, 19, 0.75, true, 1.0f, 2.0f));   // rose in 14 < 14.25: oscillating
  EXPECT_FALSE(apgd_halve_step(15, 19, 0.75, true, 1.0f, 2.0f));  // rose often and improved
  EXPECT_TRUE(apgd_halve_step(19, 19, 0.75, false, 2.0f, 2.0f));  // not halved last time and no improvement: stall
  EXPECT_FALSE(apgd_halve_step(19, 19, 0.75, false, 1.0f, 2.0f)); // improved
  EXPECT_FALSE(apgd_halve_step(19, 19, 0.75, true, 2.0f, 2.0f));  // halved last time: a stall alone does not halve again
}

// Independent double-precision definitions of the losses, for central differences.
double ref_dlr(const std::vector<double>& z, int y, int t) {
  std::vector<double> s = z;
  std::sort(s.rbegin(), s.rend());
  if (t < 0) {
    double other = -1e300;
    for (int j = 0; j < static_cast<int>(z.size()); ++j)
      if (j != y) other = std::max(other, z[j]);
    return -(z[y] - other) / (s[0] - s[2] + 1e-12);
  }
  return -(z[y] - z[t]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12);
}
double ref_ce(const std::vector<double>& z, int y) {
  double m = *std::max_element(z.begin(), z.end()), s = 0;
  for (double v : z) s += std::exp(v - m);
  return m + std::log(s) - z[y];
}

TEST(AttackLosses, GradientsMatchCentralDifferences) {
  std::mt19937 rng(7);
  std::normal_distribution<double> g(0.0, 2.0);
  const int K = 10;
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<double> z(K);
    for (double& v : z) v = g(rng);
    const int y = trial % K, t = (trial + 3) % K;
    std::vector<float> zf(z.begin(), z.end()), d(K);
    // Re-read z from the float copy so both sides see the same logits.
    for (int j = 0; j < K; ++j) z[j] = zf[j];
    for (int kind = 0; kind < 3; ++kind) {
      const float loss = kind == 0 ? attack_ce(zf.data(), K, y, d.data())
                       : kind == 1 ? attack_dlr(zf.data(), K, y, d.data())
                                   : attack_dlr_targeted(zf.data(), K, y, t, d.data());
      auto f = [&](const std::vector<double>& v) { return kind == 0 ? ref_ce(v, y) : ref_dlr(v, y, kind == 1 ? -1 : t); };
      EXPECT_NEAR(loss, f(z), 1e-5 * (1 + std::fabs(f(z))));
      // h small enough not to reorder the sorted logits (random normals are ~1e-2 apart at the closest, here).
      const double h = 1e-6;
      for (int j = 0; j < K; ++j) {
        std::vector<double> up = z, down = z;
        up[j] += h;
        down[j] -= h;
        const double numeric = (f(up) - f(down)) / (2 * h);
        EXPECT_NEAR(d[j], numeric, 1e-4 + 1e-4 * std::fabs(numeric)) << "loss " << kind << " trial " << trial << " j " << j;
      }
    }
  }
}

TEST(AttackLosses, MarginAndTopFour) {
  const float z[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 0.0f};
  int top[4];
  top4_indices(z, 6, top);
  EXPECT_EQ(top[0], 1);
  EXPECT_EQ(top[1], 3);  // ties keep the lower index first
  EXPECT_EQ(top[2], 4);
  EXPECT_EQ(top[3], 0);
  EXPECT_FLOAT_EQ(attack_margin(z, 6, 4), 2.0f - 3.0f);
  EXPECT_FLOAT_EQ(attack_margin(z, 6, 1), 0.0f);  // a tie is not a success
}

TEST(Square, ScheduleAndSquareSides) {
  EXPECT_DOUBLE_EQ(square_p(0.8, 0, 10000), 0.8);
  EXPECT_DOUBLE_EQ(square_p(0.8, 10, 10000), 0.8);
  EXPECT_DOUBLE_EQ(square_p(0.8, 11, 10000), 0.4);
  EXPECT_DOUBLE_EQ(square_p(0.8, 201, 10000), 0.1);
  EXPECT_DOUBLE_EQ(square_p(0.8, 9000, 10000), 0.8 / 512);
  EXPECT_DOUBLE_EQ(square_p(0.8, 6, 5000), 0.4);  // scaled to the budget: 6/5000 is 12 of 10,000
  // AutoAttack's setting: the paper's 10,000-iteration schedule whatever the budget, unless asked to rescale.
  SquareConfig cfg;
  EXPECT_EQ(cfg.schedule_iterations(), 10000);
  cfg.rescale = true;
  EXPECT_EQ(cfg.schedule_iterations(), 5000);
  EXPECT_EQ(square_side(0.8, 28, 28), 25);   // round(sqrt(0.8 * 784)) = round(25.04)
  EXPECT_EQ(square_side(0.4, 28, 28), 18);   // round(17.71)
  EXPECT_EQ(square_side(0.8 / 512, 28, 28), 1);
  EXPECT_EQ(square_side(1.0, 28, 28), 27);   // at most H - 1
}

// Counts the rows forwarded through logit_backprop.
class CountingBackend : public testing_support::DelegatingBackend {
 public:
  using DelegatingBackend::DelegatingBackend;
  void logit_backprop(const float* x, int n, const LogitGradient& f, float* g) override {
    rows += n;
    DelegatingBackend::logit_backprop(x, n, f, g);
  }
  long rows = 0;
};

RobustnessConfig small_config(std::vector<float> eps, std::vector<AttackId> attacks) {
  RobustnessConfig c;
  c.eps = std::move(eps);
  c.attacks = std::move(attacks);
  c.apgd_ce.iterations = c.apgd_t.iterations = 10;
  c.apgd_ce.loss = ApgdLoss::Ce;
  c.apgd_t.loss = ApgdLoss::DlrTargeted;
  c.apgd_t.targets = 3;
  c.square.queries = 60;
  c.seed = 5;
  c.progress = false;
  return c;
}

TEST(Square, SpendsEveryQueryOnAnEntryItCannotBreak) {
  REQUIRE_MNIST();
  Points p = first_test_points(4);
  CountingBackend backend;
  backend.load_model(Model::load(kModel));
  const AttackSet set = attack_set(p, 4, 1e-4f);  // far too small to flip the reference model
  AttackRecord rec;
  rec.resize(4, 784);
  SquareConfig cfg;
  cfg.queries = 37;
  const long spent = run_square(backend, set, {0, 1, 2, 3}, cfg, 28, 28, 1, rec);
  EXPECT_EQ(spent, 4 * 37);
  EXPECT_EQ(backend.rows, 4 * 37);
  for (int e = 0; e < 4; ++e) EXPECT_FALSE(rec.broken[e]);
}

// Remembers how many pixels each forwarded row differs from the row before it in.
class ChangeWatchingBackend : public testing_support::DelegatingBackend {
 public:
  void logit_backprop(const float* x, int n, const LogitGradient& f, float* g) override {
    for (int i = 0; i < n; ++i) {
      const float* row = x + static_cast<size_t>(i) * 784;
      if (!last_.empty()) {
        int changed = 0;
        for (int q = 0; q < 784; ++q) changed += row[q] != last_[q];
        changes.push_back(changed);
      }
      last_.assign(row, row + 784);
    }
    DelegatingBackend::logit_backprop(x, n, f, g);
  }
  std::vector<int> changes;

 private:
  std::vector<float> last_;
};

TEST(Square, UsesThePapersScheduleUnlessAskedToRescale) {
  REQUIRE_MNIST();
  // One entry the attack cannot break. Consecutive candidates differ only inside their two squares, so at most
  // 2 s^2 pixels: over queries 4,501..4,600 of 5,000 the unscaled schedule has p = 0.8/128, s = 2 (up to 8),
  // the rescaled one p = 0.8/512, s = 1 (up to 2).
  Points p = first_test_points(1);
  for (bool rescale : {false, true}) {
    ChangeWatchingBackend backend;
    backend.load_model(Model::load(kModel));
    const AttackSet set = attack_set(p, 1, 1e-4f);
    AttackRecord rec;
    rec.resize(1, 784);
    SquareConfig cfg;
    cfg.queries = 4601;
    cfg.rescale = rescale;
    run_square(backend, set, {0}, cfg, 28, 28, 1, rec);
    ASSERT_EQ(backend.changes.size(), 4600u);
    const int widest = *std::max_element(backend.changes.end() - 100, backend.changes.end());
    if (rescale) EXPECT_LE(widest, 2);
    else EXPECT_GT(widest, 2);
    EXPECT_LE(widest, 8);
  }
}

TEST(Cascade, NeverAttacksABrokenPointAndReportsConsistentCounts) {
  REQUIRE_MNIST();
  Points p = first_test_points(12);
  CountingBackend backend;
  backend.load_model(Model::load(kModel));
  const RobustnessConfig cfg = small_config({0.05f, 0.15f}, {AttackId::ApgdCe, AttackId::ApgdT, AttackId::Square});
  const RobustnessResult r = evaluate_robustness(backend, p.x.data(), p.y.data(), 12, 28, 28, 10, cfg);
  ASSERT_EQ(r.stages.size(), 3u);
  for (int j = 0; j < 2; ++j) {
    EXPECT_EQ(r.stages[0].attacked[j], r.clean_correct);
    for (size_t s = 1; s < 3; ++s) EXPECT_EQ(r.stages[s].attacked[j], r.stages[s - 1].robust_after[j]) << "stage " << s;
    EXPECT_LE(r.stages[2].robust_after[j], r.stages[1].robust_after[j]);
  }
  // APGD-CE at eps 0.15 on a plain model breaks something, so later stages ran on fewer entries than the first.
  EXPECT_LT(r.stages[0].robust_after[1], r.clean_correct);
  // Rows forwarded: the clean pass, then each stage's own accounting, and the re-check's predict is not counted.
  long cost = 0;
  for (const StageStats& s : r.stages) cost += s.cost;
  EXPECT_EQ(backend.rows, 12 + cost);
  for (int i = 0; i < 12; ++i)
    for (int j = 0; j < 2; ++j) {
      const size_t e = static_cast<size_t>(i) * 2 + j;
      if (r.robust[e]) {
        EXPECT_EQ(r.attack[e], 0);
      }
      if (r.attack[e]) {
        EXPECT_LE(r.linf[e], cfg.eps[j] * (1 + 1e-6f));
        EXPECT_FALSE(r.robust[e]);
      }
    }
}

void expect_same_points(const RobustnessResult& a, const RobustnessResult& b, int ja, int jb, int Ea, int Eb) {
  ASSERT_EQ(a.points, b.points);
  for (int i = 0; i < a.points; ++i) {
    const size_t ea = static_cast<size_t>(i) * Ea + ja, eb = static_cast<size_t>(i) * Eb + jb;
    EXPECT_EQ(a.robust[ea], b.robust[eb]) << "point " << i;
    EXPECT_EQ(a.attack[ea], b.attack[eb]) << "point " << i;
    EXPECT_EQ(a.restart[ea], b.restart[eb]) << "point " << i;
    EXPECT_EQ(a.step[ea], b.step[eb]) << "point " << i;
    EXPECT_TRUE(std::equal(a.images.begin() + ea * a.D, a.images.begin() + (ea + 1) * a.D, b.images.begin() + eb * b.D))
        << "point " << i;
  }
}

TEST(Cascade, ResultsDoNotDependOnChunksOrTheSweep) {
  REQUIRE_MNIST();
  Points p = first_test_points(6);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  const std::vector<AttackId> attacks{AttackId::ApgdCe, AttackId::ApgdT, AttackId::Square};
  RobustnessConfig both = small_config({0.05f, 0.1f}, attacks);
  const RobustnessResult whole = evaluate_robustness(*backend, p.x.data(), p.y.data(), 6, 28, 28, 10, both);
  RobustnessConfig chunked = both;
  chunked.chunk = 3;
  chunked.apgd_ce.chunk = chunked.apgd_t.chunk = 2;
  chunked.square.chunk = 5;
  const RobustnessResult pieces = evaluate_robustness(*backend, p.x.data(), p.y.data(), 6, 28, 28, 10, chunked);
  for (int j = 0; j < 2; ++j) expect_same_points(whole, pieces, j, j, 2, 2);
  for (int j = 0; j < 2; ++j) {
    const RobustnessConfig single = small_config({both.eps[j]}, attacks);
    const RobustnessResult one = evaluate_robustness(*backend, p.x.data(), p.y.data(), 6, 28, 28, 10, single);
    expect_same_points(whole, one, j, 0, 2, 1);
  }
}

TEST(AttackDraws, RefuseStepsAndDrawsBeyondTheCounter) {
  EXPECT_NO_THROW(attack_uniform(1, AttackId::Square, 0, 0, 0.3f, kMaxAttackSteps - 1, kMaxAttackDraws - 1));
  EXPECT_THROW(attack_uniform(1, AttackId::Square, 0, 0, 0.3f, kMaxAttackSteps, 0), InternalError);
  EXPECT_THROW(attack_uniform(1, AttackId::ApgdCe, 0, 0, 0.3f, 0, kMaxAttackDraws), InternalError);
  // The last draw of a step and the same lane of the next step's first block are different numbers.
  EXPECT_NE(attack_uniform(1, AttackId::Square, 0, 0, 0.3f, 0, kMaxAttackDraws - 1),
            attack_uniform(1, AttackId::Square, 0, 0, 0.3f, 1, 3));
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  RobustnessConfig cfg;
  cfg.eps = {0.1f};
  cfg.attacks = {AttackId::Square};
  cfg.square.queries = static_cast<int>(kMaxAttackSteps) + 1;
  cfg.progress = false;
  std::vector<float> x(784, 0.5f);
  std::vector<int32_t> y{3};
  EXPECT_THROW(evaluate_robustness(*backend, x.data(), y.data(), 1, 28, 28, 10, cfg), InputError);
}

TEST(Cascade, APointsResultDoesNotDependOnTheJobItIsIn) {
  REQUIRE_MNIST();
  // Points 0..5 as one job, and points 3..5 as a job of their own keyed by their dataset indices: the same results.
  Points p = first_test_points(6);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  // eps 0.25 breaks these points, so their examples, which depend on the draws, are compared.
  const RobustnessConfig cfg = small_config({0.25f}, {AttackId::ApgdCe, AttackId::Square});
  const std::vector<uint32_t> all{0, 1, 2, 3, 4, 5}, tail{3, 4, 5};
  const RobustnessResult whole = evaluate_robustness(*backend, p.x.data(), p.y.data(), 6, 28, 28, 10, cfg, all.data());
  const RobustnessResult part =
      evaluate_robustness(*backend, p.x.data() + 3 * 784, p.y.data() + 3, 3, 28, 28, 10, cfg, tail.data());
  const RobustnessResult unkeyed =
      evaluate_robustness(*backend, p.x.data() + 3 * 784, p.y.data() + 3, 3, 28, 28, 10, cfg);
  int differ_unkeyed = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(whole.robust[3 + i], part.robust[i]) << "point " << 3 + i;
    EXPECT_EQ(whole.step[3 + i], part.step[i]) << "point " << 3 + i;
    EXPECT_TRUE(std::equal(part.images.begin() + i * 784, part.images.begin() + (i + 1) * 784,
                           whole.images.begin() + (3 + i) * 784)) << "point " << 3 + i;
    differ_unkeyed += unkeyed.step[i] != whole.step[3 + i] ||
                      !std::equal(unkeyed.images.begin() + i * 784, unkeyed.images.begin() + (i + 1) * 784,
                                  whole.images.begin() + (3 + i) * 784);
  }
  // Keyed 0..2 instead, the same points draw otherwise: the keys are what makes the two jobs agree.
  EXPECT_GT(differ_unkeyed, 0);
}

TEST(Recheck, RefusesAPlantedBadExample) {
  REQUIRE_MNIST();
  Points p = first_test_points(1);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  const AttackSet set = attack_set(p, 1, 0.3f);
  AttackRecord rec;
  rec.resize(1, 784);
  rec.broken[0] = 1;
  rec.attack[0] = static_cast<int32_t>(AttackId::ApgdCe);
  rec.adv = p.x;  // the clean image: the model gets it right
  EXPECT_THROW(recheck_adversarial(*backend, set, rec), InternalError);
  rec.adv[100] = std::min(1.0f, p.x[100] + 0.31f) == p.x[100] + 0.31f ? p.x[100] + 0.31f : p.x[100] - 0.31f;
  EXPECT_THROW(recheck_adversarial(*backend, set, rec), InternalError);
  rec.adv = p.x;
  rec.adv[5] = 1.5f;
  EXPECT_THROW(recheck_adversarial(*backend, set, rec), InternalError);
  rec.broken[0] = 0;  // nothing reported, nothing to check
  EXPECT_NO_THROW(recheck_adversarial(*backend, set, rec));
}

}  // namespace
}  // namespace nudge

namespace nudge {
namespace {

// The smallest t with sum_j |w_j| min(t, b_j) >= |c| by bisection: an oracle for the sorted closed form.
double projection_norm_by_bisection(const std::vector<float>& w, double c, const std::vector<float>& lo,
                                    const std::vector<float>& hi) {
  auto reach = [&](double t) {
    double s = 0;
    for (size_t j = 0; j < w.size(); ++j) {
      const double dir = (c >= 0) == (w[j] >= 0) ? 1.0 : -1.0;
      s += std::fabs(w[j]) * std::min(t, std::max(0.0, static_cast<double>(dir > 0 ? hi[j] : -lo[j])));
    }
    return s;
  };
  double a = 0, b = 2;
  for (int i = 0; i < 200; ++i) {
    const double m = 0.5 * (a + b);
    (reach(m) >= std::fabs(c) ? b : a) = m;
  }
  return b;
}

// The box [0,1]^D seen from a point x with 60% of its pixels at 0 and the rest uniform: lo = -x, hi = 1 - x, so
// that the box binds the projections.
void box_around_a_point_near_the_corners(std::mt19937& rng, std::vector<float>& lo, std::vector<float>& hi) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (size_t j = 0; j < lo.size(); ++j) {
    const float x = u(rng) < 0.6f ? 0.0f : u(rng);
    lo[j] = -x;
    hi[j] = 1.0f - x;
  }
}

TEST(Fab, LinfProjectionOntoAHyperplaneHasTheClosedFormAnswer) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int D = 50;
  std::vector<float> w(D), lo(D, -10.0f), hi(D, 10.0f), d(D);
  for (float& v : w) v = g(rng);
  double l1 = 0;
  for (float v : w) l1 += std::fabs(v);
  // A box that never binds: d = c sign(w) / |w|_1, of norm |c| / |w|_1.
  const double c = -0.7;
  const float norm = linf_plane_box_projection(w.data(), c, lo.data(), hi.data(), D, d.data());
  EXPECT_NEAR(norm, std::fabs(c) / l1, 1e-6);
  double dot = 0;
  for (int j = 0; j < D; ++j) {
    dot += static_cast<double>(w[j]) * d[j];
    EXPECT_NEAR(d[j], c * ((w[j] > 0) - (w[j] < 0)) / l1, 1e-6);
  }
  EXPECT_NEAR(dot, c, 1e-5);
  // A box that binds (a point near the corners of [0,1]^D): still on the plane, and as short as bisection says.
  for (int trial = 0; trial < 10; ++trial) {
    box_around_a_point_near_the_corners(rng, lo, hi);
    const double cc = (trial % 2 ? 1 : -1) * 2.0;
    const float n2 = linf_plane_box_projection(w.data(), cc, lo.data(), hi.data(), D, d.data());
    double dd = 0, mx = 0;
    for (int j = 0; j < D; ++j) {
      dd += static_cast<double>(w[j]) * d[j];
      mx = std::max(mx, std::fabs(static_cast<double>(d[j])));
      EXPECT_GE(d[j], lo[j] - 1e-6f);
      EXPECT_LE(d[j], hi[j] + 1e-6f);
    }
    EXPECT_NEAR(dd, cc, 1e-4) << "trial " << trial;
    EXPECT_NEAR(n2, mx, 1e-6);
    EXPECT_NEAR(n2, projection_norm_by_bisection(w, cc, lo, hi), 1e-5) << "trial " << trial;
  }
}

// On a linear model the boundary between the label and a target is exactly a hyperplane, so FAB-T's answer is
// checkable: its example can be no closer than the box-constrained L-inf distance to the nearest such boundary, and
// FAB should land within its extrapolation factor of it.
// The smallest |d|_2 on the plane within the box by bisection on the multiplier mu (d_j = clip(mu s w_j)): an
// oracle for the sorted closed form of l2_plane_box_projection.
double l2_projection_norm_by_bisection(const std::vector<float>& w, double c, const std::vector<float>& lo,
                                       const std::vector<float>& hi) {
  auto d_of = [&](double mu, size_t j) {
    const double dir = (c >= 0) == (w[j] >= 0) ? 1.0 : -1.0;
    const double room = std::max(0.0, static_cast<double>(dir > 0 ? hi[j] : -lo[j]));
    return std::min(mu * std::fabs(w[j]), room);
  };
  auto reach = [&](double mu) {
    double s = 0;
    for (size_t j = 0; j < w.size(); ++j) s += std::fabs(w[j]) * d_of(mu, j);
    return s;
  };
  double a = 0, b = 1;
  while (reach(b) < std::fabs(c) && b < 1e12) b *= 2;
  for (int i = 0; i < 200; ++i) {
    const double m = 0.5 * (a + b);
    (reach(m) >= std::fabs(c) ? b : a) = m;
  }
  double n = 0;
  for (size_t j = 0; j < w.size(); ++j) n += d_of(b, j) * d_of(b, j);
  return std::sqrt(n);
}

TEST(Fab, L2ProjectionOntoAHyperplaneHasTheClosedFormAnswer) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int D = 60;
  std::vector<float> w(D), lo(D, -10.0f), hi(D, 10.0f), d(D);
  for (float& v : w) v = g(rng);
  double sq = 0;
  for (float v : w) sq += static_cast<double>(v) * v;
  // A box that never binds: d = c w / |w|^2, of norm |c| / |w|_2.
  const double c = 0.9;
  const float norm = l2_plane_box_projection(w.data(), c, lo.data(), hi.data(), D, d.data());
  EXPECT_NEAR(norm, std::fabs(c) / std::sqrt(sq), 1e-6);
  for (int j = 0; j < D; ++j) EXPECT_NEAR(d[j], c * w[j] / sq, 1e-6);
  // Boxes that bind: on the plane, inside the box, and as short as bisection on the multiplier says.
  for (int trial = 0; trial < 10; ++trial) {
    box_around_a_point_near_the_corners(rng, lo, hi);
    const double cc = (trial % 2 ? 1 : -1) * 3.0;
    const float n2 = l2_plane_box_projection(w.data(), cc, lo.data(), hi.data(), D, d.data());
    double dd = 0, nn = 0;
    for (int j = 0; j < D; ++j) {
      dd += static_cast<double>(w[j]) * d[j];
      nn += static_cast<double>(d[j]) * d[j];
      EXPECT_GE(d[j], lo[j] - 1e-6f);
      EXPECT_LE(d[j], hi[j] + 1e-6f);
    }
    EXPECT_NEAR(dd, cc, 1e-4) << "trial " << trial;
    EXPECT_NEAR(n2, std::sqrt(nn), 1e-5);
    EXPECT_NEAR(n2, l2_projection_norm_by_bisection(w, cc, lo, hi), 1e-5) << "trial " << trial;
  }
}

// FAB-T on a linear model, whose boundaries are the planes: it must find an example within 1.06x the nearest one (in
// the norm, within the box), and never closer than it.
void check_fab_on_linear_model(Norm norm) {
  Points p = first_test_points(3);
  const Architecture arch = Architecture::parse("1x28x28:flatten,dense10");
  Model lin = Model::glorot(arch, 11);
  auto backend = make_cpu_backend();
  backend->load_model(lin);
  const float* W = lin.params[0].ptr();
  const float* bias = lin.params[1].ptr();
  std::vector<float> probs(30);
  backend->predict(p.x.data(), 3, probs.data());
  AttackSet set;
  set.norm = norm;
  set.D = 784;
  set.K = 10;
  set.x0 = p.x;
  set.eps.assign(3, 1.0f);  // any distance counts: FAB's own minimum-norm search decides
  set.point = {0, 1, 2};
  for (int i = 0; i < 3; ++i) {
    const float* pr = probs.data() + i * 10;
    set.label.push_back(static_cast<int32_t>(std::max_element(pr, pr + 10) - pr));  // the model's own class
    std::vector<int32_t> order(10);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return pr[a] > pr[b]; });
    set.ranked.insert(set.ranked.end(), order.begin(), order.end());
  }
  AttackRecord rec;
  rec.resize(3, 784);
  FabConfig cfg;
  cfg.targets = 9;
  cfg.iterations = 100;
  // With eps 1 the first misclassified iterate already counts; to measure the minimum, shrink eps to the
  // smallest target distance times 1.06 (eta's overshoot, plus a little).
  for (int i = 0; i < 3; ++i) {
    const float* x0 = p.x.data() + static_cast<size_t>(i) * 784;
    const int y = set.label[i];
    double best = 1e30;
    std::vector<float> w(784), lo(784), hi(784), d(784);
    for (int t = 0; t < 10; ++t) {
      if (t == y) continue;
      double g = bias[y] - bias[t];
      for (int j = 0; j < 784; ++j) {
        w[j] = W[y * 784 + j] - W[t * 784 + j];
        g += static_cast<double>(w[j]) * x0[j];
        lo[j] = -x0[j];
        hi[j] = 1.0f - x0[j];
      }
      best = std::min(best, norm == Norm::L2 ? l2_projection_norm_by_bisection(w, -g, lo, hi)
                                             : projection_norm_by_bisection(w, -g, lo, hi));
    }
    set.eps[i] = static_cast<float>(best * 1.06);
  }
  run_fab_targeted(*backend, set, {0, 1, 2}, cfg, 1, rec);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(rec.broken[i]) << "point " << i << ": FAB-T found nothing within 1.06x the nearest boundary";
    double dist = 0;
    for (int j = 0; j < 784; ++j) {
      const double dv = static_cast<double>(rec.adv[static_cast<size_t>(i) * 784 + j]) - p.x[static_cast<size_t>(i) * 784 + j];
      dist = norm == Norm::L2 ? dist + dv * dv : std::max(dist, std::fabs(dv));
    }
    if (norm == Norm::L2) dist = std::sqrt(dist);
    EXPECT_GE(dist, set.eps[i] / 1.06 * (1 - 1e-4)) << "closer than the nearest boundary: impossible";
  }
  EXPECT_NO_THROW(recheck_adversarial(*backend, set, rec));
}

TEST(Fab, OnALinearModelFindsTheNearestBoundary) {
  REQUIRE_MNIST();
  check_fab_on_linear_model(Norm::Linf);
}

TEST(Fab, L2OnALinearModelFindsTheNearestBoundary) {
  REQUIRE_MNIST();
  check_fab_on_linear_model(Norm::L2);
}






}  // namespace
}  // namespace nudge
