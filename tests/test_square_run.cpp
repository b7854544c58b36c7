// L-inf Square's rows (host/core/square_rows.h) and its loop (square_run.h): the code the CUDA kernels run, checked
// here where there is no GPU.
// - the start and the candidate give the same bits whichever order their lanes run in;
// - a candidate changes exactly its window, and always changes a pixel when either sign could (the flip);
// - the acceptance keeps only a lower margin and marks an entry done the query its margin went negative;
// - the loop over the tests' host device (tests/support/square_host_device.cpp, the GPU device's emulation) gives
//   the CPU attack's outcome bit for bit, for compaction lags 0 to 3 and either lane order, with the same queries at
//   lag 0; and run_square takes a backend's own device run when it has one.
#include <gtest/gtest.h>

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
  std::vector<int> flags(kApgdLanes + 1, -1);
  ApgdHostLanes b{reverse};
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
    ApgdHostLanes a{false}, b{true};
    square_linf_start_row(a, k, 0.3f, x0.data(), fwd.data(), kH, kW);
    square_linf_start_row(b, k, 0.3f, x0.data(), rev.data(), kH, kW);
    ASSERT_TRUE(same_bits(fwd, rev)) << "start, trial " << trial;
    const int s = 1 + trial % (kH - 1), it = 1 + trial * 37;
    ASSERT_TRUE(same_bits(propose(k, 0.3f, it, s, x0, fwd, false), propose(k, 0.3f, it, s, x0, fwd, true)))
        << "candidate, trial " << trial;
  }
}

TEST(SquareRows, StartIsStripesOfTheKeyedSigns) {
  std::mt19937 rng(6);
  const std::vector<float> x0 = uniform(rng, kD, 0.2f, 0.8f);  // no clipping at eps 0.1
  const ApgdKey k{9, kSquareId, 1, 77};
  std::vector<float> x(kD);
  ApgdHostLanes b;
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
  SquareRunInput in;
  in.m = set.size();
  in.H = kH;
  in.W = kW;
  in.K = set.K;
  in.x0 = set.x0.data();
  in.label = set.label.data();
  in.eps = set.eps.data();
  in.point = set.point.data();
  in.seed = seed;
  in.attack = kSquareId;
  in.restart = 0;
  auto dev = test::make_host_square_device(backend, in, lag, reverse);
  Outcome o;
  o.spent = drive_square(*dev, in.m, cfg.queries, [&](int it) {
    return square_side(square_p(cfg.p_init, it - 1, cfg.schedule_iterations()), kH, kW);
  });
  o.r = dev->finish();
  return o;
}

TEST(SquareHostDevice, IsTheCpuAttackForEveryLagAndLaneOrder) {
  REQUIRE_MNIST();
  const int n = 40;
  const Points p = first_test_points(n);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kRobust));
  const AttackSet set = attack_set(p, n, 0.4f);
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
      ASSERT_EQ(std::memcmp(o.r.adv.data() + e * kD, cpu.adv.data() + e * kD, kD * sizeof(float)), 0) << "entry " << e;
    }
    // A lagging list carries broken rows for a while: never fewer queries than the prompt one.
    if (lag == 0) EXPECT_EQ(o.spent, cpu_spent);
    else EXPECT_GE(o.spent, cpu_spent);
  }
}

// A backend with its own L-inf Square run: the host device with a lag of 3, standing in for the GPU's.
class LaggingSquareBackend : public testing_support::DelegatingBackend {
 public:
  std::unique_ptr<SquareDevice> begin_square_linf(const SquareRunInput& in) override {
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
  LaggingSquareBackend lagging;
  lagging.load_model(model);
  const AttackSet set = attack_set(p, n, 0.4f);
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

}  // namespace
}  // namespace nudge
