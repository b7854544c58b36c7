// Square's rows, L-inf (host/core/square_rows.h) and L2 (square_l2_rows.h), and its loop (square_run.h): the code the
// CUDA kernels run, checked here where there is no GPU.
// - the starts and the candidates give the same bits whichever order their lanes run in; an L2 candidate stays in
//   the ball and the box, the L2 rows follow the paper's start and proposal written as plain loops (square and
//   non-square images, odd and even bumps, every side), and the pattern table holds each side's patterns where
//   square_pattern_offset says;
// - an L-inf candidate changes exactly its window, and always changes a pixel when either sign could (the flip);
// - the acceptance keeps only a lower margin and marks an entry done the query its margin went negative;
// - the loop over the tests' host device (tests/support/square_host_device.cpp, the GPU device's emulation) gives
//   the CPU attack's outcome bit for bit in both norms, for compaction lags 0 to 3 and either lane order, with the
//   attack's own query count at every lag; and run_square takes a backend's own device run when it has one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "apgd_rows.h"
#include "attack_points.h"
#include "attack_records.h"
#include "attacks.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "mnist.h"
#include "model.h"
#include "optimize_math.h"
#include "square_host_device.h"
#include "square_l2_rows.h"
#include "square_rows.h"
#include "square_run.h"

namespace nudge {
namespace {

using testing_support::attack_set;
using testing_support::first_test_points;
using testing_support::Points;

const std::string kRobust = NUDGE_SOURCE_DIR "/data/models/mnist_cnn_robust.safetensors";
constexpr int kH = 28, kW = 28, kD = kH * kW;
const uint32_t kSquareId = static_cast<uint32_t>(AttackId::Square);

std::vector<float> uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<float> propose(const ApgdKey& k, float eps, int it, int s, const std::vector<float>& x0,
                           const std::vector<float>& best, bool reverse) {
  std::vector<float> cand(kD, std::nanf(""));
  std::vector<int> flags(kRowLanes + 1, -1);
  HostLanes b{reverse};
  square_linf_propose_row(b, flags.data(), k, eps, it, s, x0.data(), best.data(), cand.data(), kH, kW);
  return cand;
}

// ---- rows -----------------------------------------------------------------------------------------------------------

TEST(SquareRows, LaneOrderDoesNotChangeABit) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> x0 = uniform(rng, kD, 0.0f, 1.0f);
    const ApgdKey k{static_cast<uint64_t>(trial), kSquareId, trial % 3, static_cast<uint32_t>(rng() % 10000)};
    std::vector<float> fwd(kD), rev(kD);
    HostLanes a{false}, b{true};
    square_linf_start_row(a, k, 0.3f, x0.data(), fwd.data(), kH, kW);
    square_linf_start_row(b, k, 0.3f, x0.data(), rev.data(), kH, kW);
    ASSERT_TRUE(same_bits(fwd, rev)) << "start, trial " << trial;
    const int s = 1 + trial % (kH - 1), it = 1 + trial * 37;
    ASSERT_TRUE(same_bits(propose(k, 0.3f, it, s, x0, fwd, false), propose(k, 0.3f, it, s, x0, fwd, true)))
        << "candidate, trial " << trial;
  }
}

TEST(SquareL2Rows, LaneOrderDoesNotChangeABitAndTheCandidateIsOnTheSphere) {
  std::mt19937 rng(8);
  const std::vector<double> patterns = square_l2_pattern_table(kH - 1);
  std::vector<double> nu(kD), partial(kApgdPartials);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> x0 = uniform(rng, kD, 0.0f, 1.0f);
    const ApgdKey k{static_cast<uint64_t>(trial), kSquareId, trial % 3, static_cast<uint32_t>(rng() % 10000)};
    const float eps = 2.0f;
    std::vector<float> fwd(kD), rev(kD);
    HostLanes a{false}, b{true};
    square_l2_start_row(a, partial.data(), nu.data(), k, eps, x0.data(), fwd.data(), kH, kW, patterns.data());
    square_l2_start_row(b, partial.data(), nu.data(), k, eps, x0.data(), rev.data(), kH, kW, patterns.data());
    ASSERT_TRUE(same_bits(fwd, rev)) << "start, trial " << trial;
    const int s = square_l2_side(0.8 / (1 << (trial % 8)), kH, kW), it = 1 + trial * 37;
    std::vector<float> c1(kD), c2(kD);
    square_l2_propose_row(a, partial.data(), nu.data(), k, eps, it, s, x0.data(), fwd.data(), c1.data(), kH, kW,
                          patterns.data());
    square_l2_propose_row(b, partial.data(), nu.data(), k, eps, it, s, x0.data(), fwd.data(), c2.data(), kH, kW,
                          patterns.data());
    ASSERT_TRUE(same_bits(c1, c2)) << "candidate, trial " << trial;
    // Before the box the perturbation has norm eps: after it, at most eps (a float rounding of slack).
    double n2 = 0;
    for (int q = 0; q < kD; ++q) {
      ASSERT_GE(c1[q], 0.0f);
      ASSERT_LE(c1[q], 1.0f);
      n2 += (static_cast<double>(c1[q]) - x0[q]) * (c1[q] - x0[q]);
    }
    EXPECT_LE(std::sqrt(n2), eps * (1 + 1e-6)) << "trial " << trial;
  }
}

// The paper's L2 proposal and start (Algorithm 3) as plain whole-image loops in pixel order, the way nudge computed
// them before the rows: an independent statement of the maths the rows must follow. Draw j of the step is the
// uniform the rows read (0, 1: W1's corner; 2, 3: W2's; 4: the sign; 5: the orientation; the start: 2k and 2k + 1
// for bump k).
struct L2Reference {
  int H, W;
  ApgdKey k;
  float eps;
  float u(uint32_t step, uint32_t j) const { return attack_draw(k.seed, k.attack, k.restart, k.point, eps, step, j); }
  std::vector<float> place(const std::vector<float>& x0, const std::vector<double>& nu) const {
    double n2 = 0;
    for (double v : nu) n2 += v * v;
    const double f = n2 > 0 ? eps / std::sqrt(n2) : 0.0;
    std::vector<float> x(nu.size());
    for (size_t q = 0; q < nu.size(); ++q) x[q] = std::min(std::max(static_cast<float>(x0[q] + nu[q] * f), 0.0f), 1.0f);
    return x;
  }
  std::vector<float> start(const std::vector<float>& x0) const {
    const int b = std::min(H, W) / 5, nh = H / b, nw = W / b, oh = (H - nh * b) / 2, ow = (W - nw * b) / 2;
    std::vector<double> nu(static_cast<size_t>(H) * W, 0.0);
    for (int bi = 0; bi < nh; ++bi)
      for (int bj = 0; bj < nw; ++bj) {
        const uint32_t cell = static_cast<uint32_t>(bi * nw + bj);
        const double sign = u(0, 2 * cell) < 0.5f ? -1.0 : 1.0;
        const std::vector<double> pat = square_l2_pattern(b, !(u(0, 2 * cell + 1) < 0.5f));
        for (int i = 0; i < b; ++i)
          for (int j = 0; j < b; ++j) nu[(oh + bi * b + i) * W + ow + bj * b + j] = sign * pat[i * b + j];
      }
    return place(x0, nu);
  }
  std::vector<float> propose(const std::vector<float>& x0, const std::vector<float>& best, int it, int s) const {
    const uint32_t st = static_cast<uint32_t>(it);
    const int r1 = square_corner(u(st, 0), H, s), c1 = square_corner(u(st, 1), W, s);
    const int r2 = square_corner(u(st, 2), H, s), c2 = square_corner(u(st, 3), W, s);
    const double sign = u(st, 4) < 0.5f ? -1.0 : 1.0;
    const std::vector<double> pat = square_l2_pattern(s, !(u(st, 5) < 0.5f));
    auto in = [s](int h, int w, int r, int c) { return h >= r && h < r + s && w >= c && w < c + s; };
    std::vector<double> nu(best.size());
    double all2 = 0, w1_2 = 0, union2 = 0;
    for (int h = 0; h < H; ++h)
      for (int w = 0; w < W; ++w) {
        const double v = static_cast<double>(best[h * W + w]) - x0[h * W + w];
        nu[h * W + w] = v;
        all2 += v * v;
        if (in(h, w, r1, c1)) w1_2 += v * v;
        if (in(h, w, r1, c1) || in(h, w, r2, c2)) union2 += v * v;
      }
    const double available = std::sqrt(union2 + std::max(static_cast<double>(eps) * eps - all2, 0.0));
    std::vector<double> fresh(static_cast<size_t>(s) * s);
    double fresh2 = 0;
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) {
        fresh[i * s + j] = sign * pat[i * s + j] + nu[(r1 + i) * W + c1 + j] / (std::sqrt(w1_2) + 1e-10);
        fresh2 += fresh[i * s + j] * fresh[i * s + j];
      }
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) nu[(r2 + i) * W + c2 + j] = 0.0;
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) nu[(r1 + i) * W + c1 + j] = fresh[i * s + j] * available / std::sqrt(fresh2);
    return place(x0, nu);
  }
};

// Pixels within 2 ulps of 1: the rows and the reference add their double sums in other orders.
::testing::AssertionResult pixels_close(const std::vector<float>& a, const std::vector<float>& b) {
  for (size_t q = 0; q < a.size(); ++q)
    if (!(std::fabs(a[q] - b[q]) <= 2.0f / (1 << 23)))
      return ::testing::AssertionFailure() << "pixel " << q << ": " << a[q] << " against " << b[q];
  return ::testing::AssertionSuccess();
}

TEST(SquareL2Rows, FollowThePapersProposalAndStartWrittenAsPlainLoops) {
  std::mt19937 rng(9);
  // 28 x 28 (bump 5), 30 x 30 (an even bump, 6), 25 x 40 (H != W): every side the schedule uses, windows overlapping
  // often at the large sides.
  for (auto [H, W] : {std::pair<int, int>{28, 28}, {30, 30}, {25, 40}}) {
    SCOPED_TRACE(std::to_string(H) + "x" + std::to_string(W));
    const std::vector<double> patterns = square_l2_pattern_table(std::min(H, W) - 1);
    std::vector<double> nu(static_cast<size_t>(H) * W), partial(kApgdPartials);
    for (int trial = 0; trial < 12; ++trial) {
      const std::vector<float> x0 = uniform(rng, static_cast<size_t>(H) * W, 0.0f, 1.0f);
      const L2Reference ref{H, W, ApgdKey{7, kSquareId, trial, static_cast<uint32_t>(rng() % 5000)}, 2.5f};
      std::vector<float> start(x0.size()), cand(x0.size());
      HostLanes b;
      square_l2_start_row(b, partial.data(), nu.data(), ref.k, ref.eps, x0.data(), start.data(), H, W,
                          patterns.data());
      ASSERT_TRUE(pixels_close(start, ref.start(x0))) << "start, trial " << trial;
      for (int s = 3; s < std::min(H, W); s += 2) {
        square_l2_propose_row(b, partial.data(), nu.data(), ref.k, ref.eps, 1 + trial + s, s, x0.data(), start.data(),
                              cand.data(), H, W, patterns.data());
        ASSERT_TRUE(pixels_close(cand, ref.propose(x0, start, 1 + trial + s, s))) << "side " << s << ", trial " << trial;
      }
    }
  }
}

TEST(SquareL2Rows, PatternTableHoldsEverySidesPatternsWhereTheOffsetSays) {
  const std::vector<double> table = square_l2_pattern_table(12);
  ASSERT_EQ(static_cast<long>(table.size()), square_pattern_offset(13));
  for (int s = 1; s <= 12; ++s)
    for (bool t : {false, true}) {
      const std::vector<double> p = square_l2_pattern(s, t);
      ASSERT_TRUE(std::equal(p.begin(), p.end(), table.begin() + square_pattern_offset(s) + (t ? s * s : 0)))
          << "side " << s << (t ? " transposed" : "");
    }
}

TEST(SquareRows, StartIsStripesOfTheKeyedSigns) {
  std::mt19937 rng(6);
  const std::vector<float> x0 = uniform(rng, kD, 0.2f, 0.8f);  // no clipping at eps 0.1
  const ApgdKey k{9, kSquareId, 1, 77};
  std::vector<float> x(kD);
  HostLanes b;
  square_linf_start_row(b, k, 0.1f, x0.data(), x.data(), kH, kW);
  for (int w = 0; w < kW; ++w) {
    const float sign = attack_uniform(9, AttackId::Square, 1, 77, 0.1f, 0, static_cast<uint32_t>(w)) < 0.5f ? -1 : 1;
    for (int h = 0; h < kH; ++h) ASSERT_EQ(x[h * kW + w], clamp01(x0[h * kW + w] + sign * 0.1f)) << h << "," << w;
  }
}

TEST(SquareRows, ACandidateChangesExactlyItsDrawnWindow) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const std::vector<float> x0 = uniform(rng, kD, 0.3f, 0.7f);
    const float eps = 0.2f;
    std::vector<float> best(kD);
    for (int q = 0; q < kD; ++q) best[q] = x0[q] + ((rng() & 1) ? 0.05f : -0.05f);  // never +-eps: every pixel moves
    const ApgdKey k{3, kSquareId, 0, static_cast<uint32_t>(trial)};
    const int s = 1 + trial % 20, it = 1 + trial;
    const std::vector<float> cand = propose(k, eps, it, s, x0, best, trial % 2);
    const int vh = square_corner(attack_uniform(3, AttackId::Square, 0, trial, eps, it, 0), kH, s);
    const int vw = square_corner(attack_uniform(3, AttackId::Square, 0, trial, eps, it, 1), kW, s);
    const float sign = attack_uniform(3, AttackId::Square, 0, trial, eps, it, 2) < 0.5f ? -1.0f : 1.0f;
    ASSERT_GE(vh, 0);
    ASSERT_LE(vh + s, kH - 1) << "the last row is never in a window (AutoAttack's corners)";
    ASSERT_LE(vw + s, kW - 1);
    for (int h = 0; h < kH; ++h)
      for (int w = 0; w < kW; ++w) {
        const int q = h * kW + w;
        const bool in = h >= vh && h < vh + s && w >= vw && w < vw + s;
        ASSERT_EQ(cand[q], in ? clamp01(x0[q] + sign * eps) : best[q]) << "trial " << trial << " at " << h << "," << w;
      }
  }
}

TEST(SquareRows, ACandidateFlipsItsSignWhenTheDrawnOneChangesNothing) {
  // x0 = 1 and best = 1: +eps clips to 1 (nothing changes), -eps gives 1 - eps. x0 = 0, best = 0: the mirror case.
  for (float edge : {1.0f, 0.0f}) {
    const std::vector<float> x0(kD, edge), best(kD, edge);
    int flipped = 0;
    for (uint32_t p = 0; p < 64; ++p) {
      const ApgdKey k{1, kSquareId, 0, p};
      const int s = 5;
      const std::vector<float> cand = propose(k, 0.25f, 3, s, x0, best, p % 2);
      int changed = 0;
      for (int q = 0; q < kD; ++q) changed += cand[q] != best[q];
      EXPECT_EQ(changed, s * s) << "point " << p;
      const float sign = attack_uniform(1, AttackId::Square, 0, p, 0.25f, 3, 2) < 0.5f ? -1.0f : 1.0f;
      flipped += clamp01(edge + sign * 0.25f) == edge;
    }
    EXPECT_GT(flipped, 10) << "the drawn sign changed something in nearly every case: the flip was not exercised";
  }
}

TEST(SquareAccept, KeepsOnlyALowerMarginAndStopsAtANegativeOne) {
  SquareEntry s{};
  bool take = false;
  s = square_accept_entry(s, 2.0f, 0, &take);
  EXPECT_TRUE(take);  // the start is always the first best image
  EXPECT_EQ(s.margin, 2.0f);
  s = square_accept_entry(s, 2.0f, 1, &take);
  EXPECT_FALSE(take) << "an equal margin is no improvement";
  s = square_accept_entry(s, 3.0f, 2, &take);
  EXPECT_FALSE(take);
  EXPECT_EQ(s.margin, 2.0f);
  s = square_accept_entry(s, 0.5f, 3, &take);
  EXPECT_TRUE(take);
  EXPECT_FALSE(s.done);
  s = square_accept_entry(s, -0.1f, 4, &take);
  EXPECT_TRUE(take);
  EXPECT_TRUE(s.done);
  EXPECT_EQ(s.broken_step, 4);
  s = square_accept_entry(s, -5.0f, 5, &take);
  EXPECT_FALSE(take) << "a done entry is left alone";
  EXPECT_EQ(s.broken_step, 4);
  EXPECT_EQ(s.margin, -0.1f);
  SquareEntry at_start{};
  at_start = square_accept_entry(at_start, -1.0f, 0, &take);
  EXPECT_TRUE(at_start.done);
  EXPECT_EQ(at_start.broken_step, 0);
}

// ---- the loop against the CPU attack --------------------------------------------------------------------------------

struct Outcome {
  SquareRunResult r;
  long spent = 0;
};

SquareConfig square_config() {
  SquareConfig cfg;
  cfg.queries = 150;
  return cfg;
}

Outcome run_host(Backend& backend, const AttackSet& set, int lag, bool reverse, uint64_t seed) {
  const SquareConfig cfg = square_config();
  const std::vector<double> patterns = square_l2_pattern_table(kH - 1);
  SquareRunInput in;
  in.m = set.size();
  in.H = kH;
  in.W = kW;
  in.K = set.K;
  in.norm = set.norm;
  in.patterns = patterns.data();
  in.pattern_count = patterns.size();
  in.x0 = set.x0.data();
  in.label = set.label.data();
  in.eps = set.eps.data();
  in.point = set.point.data();
  in.seed = seed;
  in.attack = kSquareId;
  in.restart = 0;
  auto dev = test::make_host_square_device(backend, in, lag, reverse);
  Outcome o;
  o.spent = drive_square(*dev, in.m, cfg.queries,
                         [&](int it) { return square_window_side(set.norm, cfg, it, kH, kW); });
  o.r = dev->finish();
  return o;
}

TEST(SquareHostDevice, IsTheCpuAttackForEveryLagAndLaneOrder) {
  REQUIRE_MNIST();
  const int n = 40;
  const Points p = first_test_points(n);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kRobust));
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    SCOPED_TRACE(norm == Norm::L2 ? "L2" : "Linf");
    // Radii at which the robust model loses some points and keeps others within 150 queries.
    const AttackSet set = attack_set(p, n, norm == Norm::L2 ? 3.0f : 0.4f, norm);
    AttackRecord cpu;
    cpu.resize(n, kD);
    const long cpu_spent = run_square(*backend, set, testing_support::all_entries(n), square_config(), kH, kW, 21, cpu);
    ASSERT_GT(testing_support::count_broken(cpu), 0);
    ASSERT_LT(testing_support::count_broken(cpu), n);
    for (auto [lag, reverse] : {std::pair<int, bool>{0, false}, {1, false}, {2, true}, {3, false}, {0, true}}) {
      SCOPED_TRACE("lag " + std::to_string(lag) + (reverse ? ", reversed lanes" : ""));
      const Outcome o = run_host(*backend, set, lag, reverse, 21);
      for (int e = 0; e < n; ++e) {
        ASSERT_EQ(o.r.broken[e], cpu.broken[e]) << "entry " << e;
        if (!cpu.broken[e]) continue;
        EXPECT_EQ(o.r.step[e], cpu.step[e]) << "entry " << e;
        ASSERT_EQ(std::memcmp(o.r.adv.data() + e * kD, cpu.adv.data() + e * kD, kD * sizeof(float)), 0)
            << "entry " << e;
      }
      // A lagging list carries broken rows for a while: never fewer rows than the prompt one; the attack's own count
      // is the CPU's at every lag.
      if (lag == 0) EXPECT_EQ(o.spent, cpu_spent);
      else EXPECT_GE(o.spent, cpu_spent);
      EXPECT_EQ(o.r.cost(square_config().queries), cpu_spent);
    }
  }
}

// A backend with its own Square run: the host device with a lag of 3, standing in for the GPU's.
class LaggingSquareBackend : public testing_support::DelegatingBackend {
 public:
  std::unique_ptr<SquareDevice> begin_square(const SquareRunInput& in) override {
    ++runs;
    return test::make_host_square_device(inner(), in, 3, true);
  }
  int runs = 0;
};

TEST(SquareHostDevice, RunSquareTakesTheBackendsDeviceRunWhenItHasOne) {
  REQUIRE_MNIST();
  const int n = 30;
  const Points p = first_test_points(n);
  const Model model = Model::load(kRobust);
  auto cpu = make_cpu_backend();
  cpu->load_model(model);
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    SCOPED_TRACE(norm == Norm::L2 ? "L2" : "Linf");
    LaggingSquareBackend lagging;
    lagging.load_model(model);
    const AttackSet set = attack_set(p, n, norm == Norm::L2 ? 3.0f : 0.4f, norm);
    const std::vector<int> todo = testing_support::all_entries(n);
    SquareConfig cfg = square_config();
    cfg.restarts = 2;
    cfg.chunk = 12;  // three runs in the first restart
    AttackRecord a, b;
    a.resize(n, kD);
    b.resize(n, kD);
    const long spent_cpu = run_square(*cpu, set, todo, cfg, kH, kW, 5, a);
    const long spent_lagging = run_square(lagging, set, todo, cfg, kH, kW, 5, b);
    EXPECT_GE(lagging.runs, 4);  // 3 chunks of the first restart, then those of the second on what is left
    EXPECT_TRUE(testing_support::same_record(a, b));
    // The attack's own count of queries, the same as the CPU's: rows carried by the lagging list are not counted.
    EXPECT_EQ(spent_lagging, spent_cpu);
    EXPECT_GT(testing_support::count_broken(a), 0);
  }
}

}  // namespace
}  // namespace nudge
