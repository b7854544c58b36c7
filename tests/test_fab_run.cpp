// FAB-T's rows (host/core/fab_rows.h), its loop (fab_run.h) and the host device (host/attack/fab_host_device.cpp):
// the code the CUDA kernels run too, checked here where there is no GPU.
// - the projections give the same bits whichever order their lanes run in, and agree with the plain algorithm (sort
//   every breakpoint, scan them one by one) written independently below;
// - the update breaks a close misclassified row, pulls a far one back by beta, steps a correct one onto the plane,
//   and leaves a done row alone but for its keep flag;
// - the loop evaluates 0..iterations with a gradient at all but the last, and adopts a compaction `lag` iterations
//   after it was queued;
// - on the robust model, the attack's outcome is the same bits for every compaction lag and lane order, and through
//   a backend that offers its own device run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "attack_points.h"
#include "attack_records.h"
#include "attacks.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "fab_host_device.h"
#include "fab_rows.h"
#include "fab_run.h"
#include "mnist.h"
#include "model.h"

namespace nudge {
namespace {

using testing_support::attack_set;
using testing_support::first_test_points;
using testing_support::Points;

const std::string kRobust = NUDGE_SOURCE_DIR "/data/models/mnist_cnn_robust.safetensors";

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// An image-like point: a third of its pixels at 0, a sixth at 1, the rest in between (MNIST's mix).
std::vector<float> image_like(std::mt19937& rng, int D) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(D);
  for (float& v : x) {
    const float r = u(rng);
    v = r < 0.33f ? 0.0f : r < 0.5f ? 1.0f : u(rng);
  }
  return x;
}

// A gradient with exact zeros (coordinates that do not move) among normal values.
std::vector<float> gradient(std::mt19937& rng, int D) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(D);
  for (int j = 0; j < D; ++j) w[j] = j % 9 == 4 ? 0.0f : g(rng);
  return w;
}

struct Projection {
  std::vector<float> d;
  double norm = 0;
};

Projection project(const std::vector<float>& w, double c, const std::vector<float>& base, bool l2, bool reverse) {
  const int D = static_cast<int>(w.size());
  // NaN scratch: a phase that read what no phase wrote would poison the answer.
  std::vector<double> key(fab_sort_capacity(D), std::nan("")), partial(kFabPartials, std::nan(""));
  std::vector<int32_t> idx(key.size(), -1);
  const FabScratch s{key.data(), idx.data(), nullptr, nullptr, partial.data()};
  HostLanes b{reverse};
  Projection p;
  p.d.assign(D, std::nanf(""));
  double* norm = nullptr;
  fab_project_row(b, s, w.data(), c, FabUnitBox{base.data()}, D, l2, p.d.data(), &norm);
  p.norm = *norm;
  return p;
}

// The plain algorithm, written from the maths: every coordinate's breakpoint k_j (its room b_j for L-inf, b_j / |w_j|
// for L2), all of them sorted, then the reach capped + k * free tried at each in turn, sums in sorted order.
Projection plain_projection(const std::vector<float>& w, double c, const std::vector<float>& base, bool l2) {
  const int D = static_cast<int>(w.size());
  const double target = std::fabs(c);
  std::vector<std::pair<double, int>> order;
  std::vector<double> room(D), a(D);
  double free = 0;
  for (int j = 0; j < D; ++j) {
    const bool up = (c >= 0) == (w[j] >= 0);
    a[j] = std::fabs(static_cast<double>(w[j]));
    room[j] = std::max(0.0, static_cast<double>(up ? 1.0f - base[j] : base[j]));
    if (a[j] == 0) continue;
    order.emplace_back(l2 ? room[j] / a[j] : room[j], j);
    free += l2 ? a[j] * a[j] : a[j];
  }
  std::sort(order.begin(), order.end());
  double capped = 0, t = -1;
  for (const auto& [k, j] : order) {
    if (capped + k * free >= target) {
      t = (target - capped) / free;
      break;
    }
    capped += a[j] * room[j];
    free -= l2 ? a[j] * a[j] : a[j];
  }
  Projection p;
  p.d.assign(D, 0.0f);
  double sq = 0, mx = 0;
  for (int j = 0; j < D; ++j) {
    if (a[j] == 0 || target == 0) continue;
    const bool up = (c >= 0) == (w[j] >= 0);
    const double len = t >= 0 ? std::min(l2 ? t * a[j] : t, room[j]) : room[j];
    p.d[j] = static_cast<float>(up ? len : -len);
    sq += len * len;
    mx = std::max(mx, len);
  }
  p.norm = l2 ? std::sqrt(sq) : mx;  // the norm of the step itself
  return p;
}

TEST(FabRows, ProjectionLaneOrderDoesNotChangeABit) {
  std::mt19937 rng(3);
  for (bool l2 : {false, true})
    for (int D : {784, 300, 37, 1, 1000}) {
      const std::vector<float> w = gradient(rng, D), base = image_like(rng, D);
      for (double c : {-0.8, 0.05, 0.0, 1e9}) {
        const Projection f = project(w, c, base, l2, false), r = project(w, c, base, l2, true);
        EXPECT_TRUE(same_bits(f.d, r.d)) << "D " << D << " c " << c << (l2 ? " L2" : " Linf");
        EXPECT_EQ(std::memcmp(&f.norm, &r.norm, sizeof(double)), 0) << "D " << D << " c " << c;
      }
    }
}

TEST(FabRows, ProjectionIsThePlainSortAndScan) {
  std::mt19937 rng(8);
  std::uniform_real_distribution<double> cd(-3.0, 3.0);
  for (bool l2 : {false, true})
    for (int trial = 0; trial < 40; ++trial) {
      const int D = trial % 4 == 0 ? 784 : 50 + 37 * trial;
      const std::vector<float> w = gradient(rng, D), base = image_like(rng, D);
      // Mostly reachable planes, and every fifth one beyond the box (each coordinate at its limit).
      const double c = trial % 5 == 4 ? 1e6 : cd(rng);
      const Projection got = project(w, c, base, l2, false), want = plain_projection(w, c, base, l2);
      SCOPED_TRACE((l2 ? "L2 trial " : "Linf trial ") + std::to_string(trial));
      // The two differ only in the order of their double sums (chunks by lane against one running sum): some 1e-16
      // relative per sum over ~1,000 terms, amplified by the linear piece's division; pixels are floats.
      EXPECT_NEAR(got.norm, want.norm, 1e-9 * (1 + want.norm));
      double mx = 0, sq = 0;  // and it is the norm of the floats returned, to their rounding
      for (float v : got.d) {
        mx = std::max(mx, std::fabs(static_cast<double>(v)));
        sq += static_cast<double>(v) * v;
      }
      EXPECT_NEAR(got.norm, l2 ? std::sqrt(sq) : mx, 1e-6 * (1 + got.norm));
      for (int j = 0; j < D; ++j) ASSERT_NEAR(got.d[j], want.d[j], 1e-6f * (1 + std::fabs(want.d[j]))) << "pixel " << j;
      if (c < 1e5) {  // on the plane
        double wd = 0;
        for (int j = 0; j < D; ++j) wd += static_cast<double>(w[j]) * got.d[j];
        EXPECT_NEAR(wd, c, 1e-4 * (1 + std::fabs(c)));
      }
    }
}

TEST(FabRows, ProjectionNormIsTheStepsOwn) {
  // An unreachable plane: the moving pixels can go 0.1 each, pixel 3 (w = 0, it never moves) has room 1. The
  // step's L-inf norm is what the moving pixels took, not the box's largest room.
  const int D = 10;
  std::vector<float> w(D, 1.0f), base(D, 0.9f);
  w[3] = 0.0f;
  base[3] = 0.0f;
  const Projection p = project(w, 1e6, base, false, false);
  EXPECT_EQ(p.d[3], 0.0f);
  EXPECT_DOUBLE_EQ(p.norm, static_cast<double>(1.0f - 0.9f));
  // c = 0: no step at all, norm 0, in both norms.
  for (bool l2 : {false, true}) {
    const Projection z = project(w, 0.0, base, l2, false);
    EXPECT_EQ(z.norm, 0.0);
    for (float v : z.d) EXPECT_EQ(v, 0.0f);
  }
}

// ---- the update ------------------------------------------------------------------------------------------------------

struct UpdateCase {
  int D = 0;
  std::vector<float> x, x0, w, adv;
  std::vector<double> key, partial;
  std::vector<int32_t> idx;
  std::vector<float> d_i, d_0;
  FabEntry entry;
  uint8_t keep = 7;
};

UpdateCase update_case(std::mt19937& rng, int D, float delta) {
  UpdateCase u;
  u.D = D;
  u.x0 = image_like(rng, D);
  std::uniform_real_distribution<float> dv(-delta, delta);
  u.x.resize(D);
  for (int j = 0; j < D; ++j) u.x[j] = clamp01(u.x0[j] + dv(rng));
  u.w = gradient(rng, D);
  u.adv.assign(D, -1.0f);
  u.key.resize(fab_sort_capacity(D));
  u.idx.resize(u.key.size());
  u.partial.assign(kFabPartials, 0.0);
  u.d_i.resize(D);
  u.d_0.resize(D);
  return u;
}

void update(UpdateCase& u, float g, bool misclassified, float eps, const FabStep& st, bool reverse = false) {
  HostLanes b{reverse};
  const FabScratch s{u.key.data(), u.idx.data(), u.d_i.data(), u.d_0.data(), u.partial.data()};
  const FabUpdateRow r{&u.entry, u.x.data(), u.x0.data(), u.w.data(), g, misclassified, eps, u.adv.data(), &u.keep};
  fab_update_row(b, s, r, st, u.D);
}

TEST(FabRows, UpdateBreaksACloseMisclassifiedRowAndPullsAFarOneBack) {
  std::mt19937 rng(21);
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    FabStep st;
    st.norm = norm;
    st.iteration = 6;
    UpdateCase close = update_case(rng, 784, 0.1f);
    double dist = 0;
    for (int j = 0; j < 784; ++j) {
      const double d = static_cast<double>(close.x[j]) - close.x0[j];
      dist = norm == Norm::L2 ? dist + d * d : std::max(dist, std::fabs(d));
    }
    if (norm == Norm::L2) dist = std::sqrt(dist);
    UpdateCase far = close;
    const std::vector<float> x = close.x;
    update(close, -1.0f, true, static_cast<float>(dist * 1.001), st);
    EXPECT_EQ(close.entry.done, 1);
    EXPECT_EQ(close.entry.broken_step, 6);
    EXPECT_EQ(close.keep, 0);
    EXPECT_TRUE(same_bits(close.adv, x));
    EXPECT_TRUE(same_bits(close.x, x));
    update(far, -1.0f, true, static_cast<float>(dist * 0.999), st);
    EXPECT_EQ(far.entry.done, 0);
    EXPECT_EQ(far.keep, 1);
    for (int j = 0; j < 784; ++j) ASSERT_EQ(far.x[j], (1.0f - st.beta) * far.x0[j] + st.beta * x[j]) << j;
    // A done row is left as it is, whatever its evaluation says, and leaves the list at the next compaction.
    const std::vector<float> before = far.x;
    far.entry.done = 1;
    far.keep = 9;
    update(far, -1.0f, true, 1.0f, st);
    EXPECT_TRUE(same_bits(far.x, before));
    EXPECT_EQ(far.keep, 0);
  }
}

TEST(FabRows, UpdateStepsACorrectRowOntoTheLinearisedBoundary) {
  std::mt19937 rng(22);
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    // alpha_max 0 and eta 1: the step is d_i alone, x' = clip01(x + d_i), so w.(x' - x) = -g when the box allows.
    FabStep st;
    st.norm = norm;
    st.alpha_max = 0.0f;
    st.eta = 1.0f;
    UpdateCase u = update_case(rng, 784, 0.05f);
    const std::vector<float> x = u.x;
    const float g = 0.2f;
    update(u, g, false, 0.3f, st);
    EXPECT_EQ(u.keep, 1);
    EXPECT_EQ(u.entry.done, 0);
    double wd = 0;
    for (int j = 0; j < 784; ++j) wd += static_cast<double>(u.w[j]) * (u.x[j] - x[j]);
    EXPECT_NEAR(wd, -g, 1e-4);
    // The full step: same bits in either lane order; inside [0,1].
    UpdateCase a = update_case(rng, 784, 0.05f), b = a;
    FabStep full;
    full.norm = norm;
    update(a, 0.7f, false, 0.3f, full, false);
    update(b, 0.7f, false, 0.3f, full, true);
    EXPECT_TRUE(same_bits(a.x, b.x));
    for (float v : a.x) ASSERT_TRUE(v >= 0.0f && v <= 1.0f);
    // The last evaluation (no gradient): a correct row stays where it is.
    UpdateCase last = update_case(rng, 784, 0.05f);
    const std::vector<float> xl = last.x;
    FabStep end;
    end.norm = norm;
    end.need_grad = false;
    last.w.clear();  // not read
    update(last, 0.7f, false, 0.3f, end);
    EXPECT_TRUE(same_bits(last.x, xl));
  }
}

// ---- the loop --------------------------------------------------------------------------------------------------------

// Records the calls; its entries break at scripted iterations.
class ScriptedFab : public FabDevice {
 public:
  ScriptedFab(std::vector<int> breaks_at, int lag) : breaks_at_(std::move(breaks_at)), lag_(lag) {}
  void start() override { log.push_back("start"); }
  void evaluate(int count, bool need_grad) override {
    log.push_back("evaluate " + std::to_string(count) + (need_grad ? "" : " no grad"));
  }
  void update(int count, const FabStep& st) override {
    log.push_back("update " + std::to_string(count) + " @" + std::to_string(st.iteration));
    iteration_ = st.iteration;
  }
  void compact(int) override {
    int n = 0;
    for (int b : breaks_at_) n += b > iteration_;
    pending_ = n;
    log.push_back("compact");
  }
  bool compaction_ready(bool wait) override { return wait; }
  int adopt_compaction() override {
    log.push_back("adopt " + std::to_string(pending_));
    return pending_;
  }
  int compaction_lag() const override { return lag_; }
  FabRunResult finish() override { return {}; }
  std::vector<std::string> log;

 private:
  std::vector<int> breaks_at_;
  int lag_, iteration_ = 0, pending_ = 0;
};

TEST(FabDriver, EvaluatesEveryIterationAndTheLastWithoutAGradient) {
  ScriptedFab dev({100, 100}, 0);
  FabRunInput in;
  EXPECT_EQ(drive_fab(dev, 2, 2, in), 2 * 3);
  const std::vector<std::string> want = {"start", "evaluate 2", "update 2 @0", "compact", "adopt 2", "evaluate 2",
                                         "update 2 @1", "compact", "adopt 2", "evaluate 2 no grad", "update 2 @2",
                                         "compact"};
  EXPECT_EQ(dev.log, want);
}

TEST(FabDriver, AdoptsACompactionLagIterationsLaterAndStopsWhenNoneIsLeft) {
  ScriptedFab dev({0, 2, 3}, 2);
  FabRunInput in;
  const long spent = drive_fab(dev, 3, 10, in);
  const std::vector<std::string> want = {
      "start", "evaluate 3", "update 3 @0", "compact",  // after 0: 2 left
      "evaluate 3", "update 3 @1", "evaluate 3", "update 3 @2",
      "adopt 2", "evaluate 2", "update 2 @3", "compact",  // after 3: none
      "evaluate 2", "update 2 @4", "evaluate 2", "update 2 @5", "adopt 0"};
  EXPECT_EQ(dev.log, want);
  EXPECT_EQ(spent, 3 + 3 + 3 + 2 + 2 + 2);
}

// ---- the host device on the robust model -----------------------------------------------------------------------------

struct Outcome {
  FabRunResult r;
  long rows = 0;
};

Outcome run_host(Backend& backend, const AttackSet& set, const std::vector<int32_t>& target, int iterations, int lag,
                 bool reverse) {
  const FabRunInput in = testing_support::fab_input(set, target);
  auto dev = make_host_fab_device(backend, in, lag, reverse);
  Outcome o;
  o.rows = drive_fab(*dev, in.m, iterations, in);
  o.r = dev->finish();
  return o;
}

TEST(FabHostDevice, OutcomeDoesNotDependOnTheCompactionLagOrLaneOrder) {
  REQUIRE_MNIST();
  const int n = 40;
  const Points p = first_test_points(n);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kRobust));
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    SCOPED_TRACE(norm == Norm::L2 ? "L2" : "Linf");
    // Radii at which FAB-T breaks some of the robust model's points and not others within 20 iterations.
    AttackSet set = attack_set(p, n, norm == Norm::L2 ? 1.5f : 0.3f, norm);
    testing_support::rank_by_clean_logits(*backend, set);
    const std::vector<int32_t> target = testing_support::first_targets(set);
    const Outcome base = run_host(*backend, set, target, 20, 0, false);
    int broken = 0;
    for (uint8_t b : base.r.broken) broken += b;
    EXPECT_GT(broken, 0);
    EXPECT_LT(broken, n);
    for (auto [lag, reverse] : {std::pair<int, bool>{1, false}, {3, false}, {0, true}, {2, true}}) {
      const Outcome o = run_host(*backend, set, target, 20, lag, reverse);
      EXPECT_EQ(o.r.broken, base.r.broken) << "lag " << lag << (reverse ? ", reversed lanes" : "");
      EXPECT_EQ(o.r.step, base.r.step) << "lag " << lag;
      for (int e = 0; e < n; ++e) {
        if (!base.r.broken[e]) continue;
        ASSERT_EQ(std::memcmp(o.r.adv.data() + e * 784, base.r.adv.data() + e * 784, 784 * sizeof(float)), 0)
            << "entry " << e << ", lag " << lag;
      }
      // A lagging list carries broken rows for a while; the attack's own count does not see them.
      if (lag > 0) EXPECT_GE(o.rows, base.rows);
      else EXPECT_EQ(o.rows, base.rows);
      EXPECT_EQ(o.r.cost(21), base.r.cost(21));
    }
  }
}

// A backend with its own FAB run: the host device with a lag of 3, standing in for the GPU's.
class LaggingFabBackend : public testing_support::DelegatingBackend {
 public:
  std::unique_ptr<FabDevice> begin_fab(const FabRunInput& in) override {
    ++runs;
    return make_host_fab_device(inner(), in, 3);
  }
  int runs = 0;
};

TEST(FabHostDevice, RunFabTakesTheBackendsDeviceRunWhenItHasOne) {
  REQUIRE_MNIST();
  const int n = 40;
  const Points p = first_test_points(n);
  const Model model = Model::load(kRobust);
  auto cpu = make_cpu_backend();
  cpu->load_model(model);
  LaggingFabBackend lagging;
  lagging.load_model(model);
  AttackSet set = attack_set(p, n, 0.3f);
  testing_support::rank_by_clean_logits(*cpu, set);
  const std::vector<int> todo = testing_support::all_entries(n);
  FabConfig cfg;
  cfg.iterations = 15;
  cfg.targets = 2;
  cfg.chunk = 16;  // three runs per target
  AttackRecord a, b;
  a.resize(n, 784);
  b.resize(n, 784);
  const long spent_cpu = run_fab_targeted(*cpu, set, todo, cfg, 9, a);
  const long spent_lagging = run_fab_targeted(lagging, set, todo, cfg, 9, b);
  EXPECT_GE(lagging.runs, 4);
  EXPECT_TRUE(testing_support::same_record(a, b));
  EXPECT_EQ(spent_lagging, spent_cpu);
  EXPECT_GT(testing_support::count_broken(a), 0);
}

}  // namespace
}  // namespace nudge
