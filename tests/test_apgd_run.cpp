// APGD's rows (host/core/apgd_rows.h), its per-entry bookkeeping (apgd_math.h), its loop (apgd_run.h) and the host
// device (host/attack/apgd_host_device.cpp): the code the CUDA kernels run too, checked here where there is no GPU.
// - the rows give the same bits whichever order their lanes run in (a phase that read another lane's writes would
//   not), and agree with the whole-image formula of the step (optimize_math.h's projections);
// - the start is on the eps-sphere and made of the keyed draws;
// - tracking follows the paper's rules on a constructed loss sequence, and leaves a broken entry alone;
// - the loop calls the device in the paper's order, flags the checkpoints of the schedule and adopts a compaction
//   exactly `lag` iterations after it was queued;
// - on the robust model, the attack's outcome is the same bits for every compaction lag and lane order, and through
//   a backend that offers its own device run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "apgd_host_device.h"
#include "apgd_rows.h"
#include "apgd_run.h"
#include "attack_points.h"
#include "attack_records.h"
#include "attacks.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "mnist.h"
#include "model.h"
#include "optimize_math.h"

namespace nudge {
namespace {

using testing_support::attack_set;
using testing_support::first_test_points;
using testing_support::Points;

const std::string kRobust = NUDGE_SOURCE_DIR "/data/models/mnist_cnn_robust.safetensors";

std::vector<float> uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- rows ------------------------------------------------------------------------------------------------------------

struct StepCase {
  std::vector<float> x, x_prev, g, x0;
};

StepCase step_case(std::mt19937& rng, int D, float eps) {
  StepCase c;
  c.x0 = uniform(rng, D, 0.0f, 1.0f);
  c.x.resize(D);
  c.x_prev.resize(D);
  const std::vector<float> dx = uniform(rng, D, -eps, eps), dp = uniform(rng, D, -eps, eps);
  for (int i = 0; i < D; ++i) {
    c.x[i] = clamp01(c.x0[i] + dx[i] / std::sqrt(static_cast<float>(D)));
    c.x_prev[i] = clamp01(c.x0[i] + dp[i] / std::sqrt(static_cast<float>(D)));
  }
  c.g = uniform(rng, D, -1.0f, 1.0f);
  for (int i = 0; i < D; i += 7) c.g[i] = 0.0f;  // sign(0) = 0
  return c;
}

void run_step(StepCase& c, float eps, float eta, float alpha, Norm norm, bool reverse) {
  HostLanes b{reverse};
  std::vector<double> partial(kApgdPartials, std::nan(""));  // a read of a partial no phase wrote poisons the row
  apgd_step_row(b, partial.data(), c.x.data(), c.x_prev.data(), c.g.data(), c.x0.data(), static_cast<int>(c.x.size()),
                eps, eta, alpha, norm);
}

TEST(ApgdRows, LaneOrderDoesNotChangeABit) {
  std::mt19937 rng(11);
  for (Norm norm : {Norm::Linf, Norm::L2})
    for (int D : {784, 37, 1000}) {
      const float eps = norm == Norm::L2 ? 1.5f : 0.3f;
      StepCase a = step_case(rng, D, eps), b = a;
      run_step(a, eps, 0.4f, 0.75f, norm, false);
      run_step(b, eps, 0.4f, 0.75f, norm, true);
      EXPECT_TRUE(same_bits(a.x, b.x)) << "D " << D;
      EXPECT_TRUE(same_bits(a.x_prev, b.x_prev)) << "D " << D;
      std::vector<float> sa(D), sb(D);
      std::vector<double> partial(kApgdPartials);
      HostLanes fwd{false}, rev{true};
      const ApgdKey k{7, 1, 2, 99};
      apgd_start_row(fwd, partial.data(), k, eps, norm, a.x0.data(), sa.data(), D);
      apgd_start_row(rev, partial.data(), k, eps, norm, a.x0.data(), sb.data(), D);
      EXPECT_TRUE(same_bits(sa, sb)) << "D " << D;
    }
}

TEST(ApgdRows, StepIsTheWholeImageFormula) {
  std::mt19937 rng(12);
  for (Norm norm : {Norm::Linf, Norm::L2})
    for (float alpha : {1.0f, 0.75f}) {
      const int D = 784;
      const float eps = norm == Norm::L2 ? 2.0f : 0.3f, eta = norm == Norm::L2 ? 1.0f : 0.15f;
      StepCase c = step_case(rng, D, eps);
      const StepCase before = c;
      run_step(c, eps, eta, alpha, norm, false);
      // z = P(x + eta dir(g)); x' = P(x + alpha (z - x) + (1 - alpha)(x - x_prev)), the projections of optimize_math.h.
      std::vector<float> z(D), want(D);
      double gn = 0;
      for (float g : before.g) gn += static_cast<double>(g) * g;
      gn = std::sqrt(gn) + 1e-12;
      for (int i = 0; i < D; ++i) {
        const float g = before.g[i];
        z[i] = before.x[i] + eta * (norm == Norm::L2 ? static_cast<float>(g / gn) : static_cast<float>((g > 0) - (g < 0)));
      }
      project_one(z.data(), before.x0.data(), D, eps, norm);
      for (int i = 0; i < D; ++i)
        want[i] = before.x[i] + alpha * (z[i] - before.x[i]) + (1.0f - alpha) * (before.x[i] - before.x_prev[i]);
      project_one(want.data(), before.x0.data(), D, eps, norm);
      EXPECT_TRUE(same_bits(c.x_prev, before.x));
      // Linf has no sums: the same bits. L2's norms add the same terms in another order (lanes): a few ulps of a
      // double, which move a float pixel by at most an ulp of the scale factor, ~1e-7 of the displacement.
      for (int i = 0; i < D; ++i) {
        if (norm == Norm::Linf) ASSERT_EQ(c.x[i], want[i]) << "pixel " << i;
        else ASSERT_NEAR(c.x[i], want[i], 4e-7f) << "pixel " << i;
      }
      double dist = 0, dmax = 0;
      for (int i = 0; i < D; ++i) {
        const double d = c.x[i] - before.x0[i];
        dist += d * d;
        dmax = std::max(dmax, std::fabs(d));
        ASSERT_GE(c.x[i], 0.0f);
        ASSERT_LE(c.x[i], 1.0f);
      }
      if (norm == Norm::L2) EXPECT_LE(std::sqrt(dist), eps * (1 + 1e-6));
      else EXPECT_LE(dmax, eps * (1 + 1e-6));
    }
}

TEST(ApgdRows, StartIsOnTheSphereAndMadeOfTheKeyedDraws) {
  const int D = 784;
  const std::vector<float> x0(D, 0.5f);  // far enough from 0 and 1 that no pixel is clamped
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    const float eps = norm == Norm::L2 ? 2.0f : 0.3f;
    std::vector<float> x(D);
    std::vector<double> partial(kApgdPartials);
    HostLanes b;
    const ApgdKey k{3, static_cast<uint32_t>(AttackId::ApgdCe), 1, 42};
    apgd_start_row(b, partial.data(), k, eps, norm, x0.data(), x.data(), D);
    double l2 = 0, linf = 0, t_norm = 0;
    std::vector<float> t(D);
    for (int i = 0; i < D; ++i) {
      t[i] = 2.0f * attack_uniform(3, AttackId::ApgdCe, 1, 42, eps, 0, i) - 1.0f;
      t_norm = norm == Norm::L2 ? t_norm + static_cast<double>(t[i]) * t[i] : std::max(t_norm, std::fabs(static_cast<double>(t[i])));
    }
    if (norm == Norm::L2) t_norm = std::sqrt(t_norm);
    const float f = static_cast<float>(eps / t_norm);
    for (int i = 0; i < D; ++i) {
      ASSERT_EQ(x[i], clamp01(x0[i] + f * t[i])) << "pixel " << i;
      const double d = x[i] - x0[i];
      l2 += d * d;
      linf = std::max(linf, std::fabs(d));
    }
    if (norm == Norm::L2) EXPECT_NEAR(std::sqrt(l2), eps, 1e-5);
    else EXPECT_NEAR(linf, eps, 1e-6);
  }
}

// ---- tracking --------------------------------------------------------------------------------------------------------

struct TrackedRow {
  int D = 5;
  ApgdEntry entry{};
  std::vector<float> x, g_next, x_best, g_best, adv;
  uint8_t keep = 9;
  TrackedRow() : x(5), g_next(5, NAN), x_best(5, NAN), g_best(5, NAN), adv(5, NAN) {}

  // Tracks an evaluation at iterate value v (every pixel), gradient value gv, of loss `loss`.
  void track(float v, float gv, float loss, bool misclassified, const ApgdTrackStep& t) {
    std::fill(x.begin(), x.end(), v);
    const std::vector<float> g(D, gv);
    HostLanes b;
    const ApgdTrackRow r{&entry, loss, misclassified, 0.3f, x.data(), g.data(), g_next.data(), x_best.data(),
                         g_best.data(), adv.data(), &keep};
    apgd_track_row(b, r, t, D);
  }
};

ApgdTrackStep at(int iteration, bool checkpoint = false, int since = 0) {
  ApgdTrackStep t;
  t.iteration = iteration;
  t.checkpoint = checkpoint;
  t.since_check = since;
  return t;
}

TEST(ApgdTrack, FollowsThePapersRulesOnAConstructedSequence) {
  TrackedRow r;
  r.track(0.1f, 1.0f, 2.0f, false, at(0));
  EXPECT_EQ(r.entry.eta, 0.6f);  // 2 eps
  EXPECT_EQ(r.entry.loss_best, 2.0f);
  EXPECT_EQ(r.x_best[0], 0.1f);
  EXPECT_EQ(r.g_next[0], 1.0f);
  EXPECT_EQ(r.keep, 1);
  // Iterations 1-4: losses 3 (rise, best), 2.5 (fall), 2.7 (rise), 2.6 (fall); checkpoint after 4 with 2 of 4 rises:
  // 2 < 0.75 * 4, so the step halves and the entry goes back to its best iterate (0.2, gradient 2).
  r.track(0.2f, 2.0f, 3.0f, false, at(1));
  EXPECT_EQ(r.x_best[3], 0.2f);
  r.track(0.3f, 3.0f, 2.5f, false, at(2));
  r.track(0.4f, 4.0f, 2.7f, false, at(3));
  EXPECT_EQ(r.entry.increases, 2);
  EXPECT_EQ(r.x_best[0], 0.2f);
  r.track(0.5f, 5.0f, 2.6f, false, at(4, true, 4));
  EXPECT_EQ(r.entry.eta, 0.3f);
  EXPECT_EQ(r.entry.halved_last, 1);
  EXPECT_EQ(r.entry.increases, 0);
  EXPECT_EQ(r.entry.prev, 3.0f);  // the next rise is judged against the best loss it restarts from
  EXPECT_EQ(r.entry.best_last, 3.0f);
  for (int i = 0; i < r.D; ++i) {
    EXPECT_EQ(r.x[i], 0.2f);
    EXPECT_EQ(r.g_next[i], 2.0f);
  }
  // Iterations 5-6 rise every time (3.1, 3.2): no oscillation, and the best improved, so no halving at 6.
  r.track(0.6f, 6.0f, 3.1f, false, at(5));
  r.track(0.7f, 7.0f, 3.2f, false, at(6, true, 2));
  EXPECT_EQ(r.entry.eta, 0.3f);
  EXPECT_EQ(r.entry.halved_last, 0);
  EXPECT_EQ(r.x[0], 0.7f);
  EXPECT_EQ(r.g_next[0], 7.0f);
  // Iterations 7-8 rise (3.3, then 3.25 is a fall: 1 of 2 < 1.5) -> halves.
  r.track(0.8f, 8.0f, 3.3f, false, at(7));
  r.track(0.9f, 9.0f, 3.25f, false, at(8, true, 2));
  EXPECT_EQ(r.entry.eta, 0.15f);
  EXPECT_EQ(r.x[0], 0.8f);
  // Broken at 9: recorded, and then left alone.
  r.track(0.95f, 1.0f, 5.0f, true, at(9));
  EXPECT_EQ(r.entry.done, 1);
  EXPECT_EQ(r.entry.broken_step, 9);
  EXPECT_EQ(r.keep, 0);
  EXPECT_EQ(r.adv[0], 0.95f);
  const ApgdEntry frozen = r.entry;
  const std::vector<float> x_best = r.x_best, g_next = r.g_next;
  r.track(0.05f, 1.0f, 9.0f, false, at(10, true, 2));
  EXPECT_EQ(std::memcmp(&frozen, &r.entry, sizeof frozen), 0);
  EXPECT_EQ(r.adv[0], 0.95f);
  EXPECT_TRUE(same_bits(x_best, r.x_best));
  EXPECT_TRUE(same_bits(g_next, r.g_next));
  EXPECT_EQ(r.keep, 0);
}

TEST(ApgdTrack, AStallHalvesOnlyWhenTheLastCheckpointDidNot) {
  TrackedRow r;
  r.track(0.1f, 1.0f, 2.0f, false, at(0));
  r.track(0.2f, 1.0f, 2.5f, false, at(1));
  r.track(0.3f, 1.0f, 2.8f, false, at(2, true, 2));  // rose twice and improved: keeps eta
  EXPECT_EQ(r.entry.eta, 0.6f);
  EXPECT_EQ(r.entry.best_last, 2.8f);
  // A fall, then three rises that stay below the best (2.8): 3 of 4 is not an oscillation, but the best did not
  // improve and the last checkpoint did not halve: a stall, which halves.
  r.track(0.4f, 1.0f, 2.0f, false, at(3));
  r.track(0.5f, 1.0f, 2.1f, false, at(4));
  r.track(0.6f, 1.0f, 2.2f, false, at(5));
  r.track(0.7f, 1.0f, 2.3f, false, at(6, true, 4));
  EXPECT_EQ(r.entry.eta, 0.3f);
  EXPECT_EQ(r.entry.halved_last, 1);
  EXPECT_EQ(r.x[0], 0.3f);  // back to the best iterate
  // The same stall right after a halving does not halve again.
  r.track(0.4f, 1.0f, 2.0f, false, at(7));
  r.track(0.5f, 1.0f, 2.1f, false, at(8));
  r.track(0.6f, 1.0f, 2.2f, false, at(9));
  r.track(0.7f, 1.0f, 2.3f, false, at(10, true, 4));
  EXPECT_EQ(r.entry.eta, 0.3f);
  EXPECT_EQ(r.entry.halved_last, 0);
  EXPECT_EQ(r.x[0], 0.7f);
  // And the stall after that one does.
  r.track(0.4f, 1.0f, 2.0f, false, at(11));
  r.track(0.5f, 1.0f, 2.1f, false, at(12));
  r.track(0.6f, 1.0f, 2.2f, false, at(13));
  r.track(0.7f, 1.0f, 2.3f, false, at(14, true, 4));
  EXPECT_EQ(r.entry.eta, 0.15f);
}

// ---- the loop --------------------------------------------------------------------------------------------------------

// Records the calls; its entries break at scripted iterations, and its compactions complete `early` when asked.
class ScriptedDevice : public ApgdDevice {
 public:
  ScriptedDevice(std::vector<int> breaks_at, int lag, bool early) : breaks_at_(std::move(breaks_at)), lag_(lag), early_(early) {}
  void start() override { log.push_back("start"); live_ = static_cast<int>(breaks_at_.size()); }
  void evaluate(int count) override { log.push_back("evaluate " + std::to_string(count)); }
  void track(int count, const ApgdTrackStep& t) override {
    log.push_back("track " + std::to_string(count) + " @" + std::to_string(t.iteration) +
                  (t.checkpoint ? " checkpoint " + std::to_string(t.since_check) : ""));
    iteration_ = t.iteration;
  }
  void step(int count, float alpha) override {
    log.push_back("step " + std::to_string(count) + " alpha " + std::to_string(alpha).substr(0, 4));
  }
  void compact(int) override {
    int n = 0;
    for (int b : breaks_at_) n += b > iteration_;
    pending_ = n;
    log.push_back("compact");
  }
  bool compaction_ready(bool wait) override { return wait || early_; }
  int adopt_compaction() override {
    log.push_back("adopt " + std::to_string(pending_));
    return pending_;
  }
  int compaction_lag() const override { return lag_; }
  ApgdRunResult finish() override { return {}; }
  std::vector<std::string> log;

 private:
  std::vector<int> breaks_at_;
  int lag_;
  bool early_;
  int live_ = 0, iteration_ = 0, pending_ = 0;
};

TEST(ApgdDriver, FlagsThePapersCheckpointsAndUsesMomentumAfterTheFirstStep) {
  ScriptedDevice dev({1000, 1000}, 0, false);
  const ApgdRunCost cost = drive_apgd(dev, 2, 100, 0.75, 0.75);
  EXPECT_EQ(cost.iterations, 100);
  EXPECT_EQ(cost.image_steps, 2 * 101);
  std::vector<std::string> checks;
  for (const std::string& l : dev.log)
    if (l.find("checkpoint") != std::string::npos) checks.push_back(l);
  EXPECT_EQ(checks, (std::vector<std::string>{"track 2 @22 checkpoint 22", "track 2 @41 checkpoint 19",
                                              "track 2 @57 checkpoint 16", "track 2 @70 checkpoint 13",
                                              "track 2 @80 checkpoint 10", "track 2 @87 checkpoint 7",
                                              "track 2 @93 checkpoint 6", "track 2 @99 checkpoint 6"}));
  const std::vector<std::string> head(dev.log.begin(), dev.log.begin() + 10);
  EXPECT_EQ(head, (std::vector<std::string>{"start", "evaluate 2", "track 2 @0", "compact", "adopt 2",
                                            "step 2 alpha 1.00", "evaluate 2", "track 2 @1", "compact", "adopt 2"}));
  EXPECT_EQ(dev.log[10], "step 2 alpha 0.75");
}

TEST(ApgdDriver, AdoptsACompactionLagIterationsLaterAndStopsWhenNoneIsLeft) {
  // Entries break at iterations 0, 2 and 3; with lag 2 the host learns of each list two iterations late.
  ScriptedDevice dev({0, 2, 3}, 2, false);
  const ApgdRunCost cost = drive_apgd(dev, 3, 10, 0.75, 0.75);
  const std::vector<std::string> want = {
      "start", "evaluate 3", "track 3 @0", "compact",                         // list after 0: 2 left
      "step 3 alpha 1.00", "evaluate 3", "track 3 @1",                          // i = 0: not waited for yet
      "step 3 alpha 0.75", "evaluate 3", "track 3 @2",                          // i = 1
      "adopt 2", "step 2 alpha 0.75", "evaluate 2", "track 2 @3 checkpoint 3", "compact",  // i = 2 waits; after 3: none
      "step 2 alpha 0.75", "evaluate 2", "track 2 @4",
      "step 2 alpha 0.75", "evaluate 2", "track 2 @5 checkpoint 2",          // checkpoints of 10: 3, 5, 6, ...
      "adopt 0"};
  EXPECT_EQ(dev.log, want);
  EXPECT_EQ(cost.iterations, 5);
  EXPECT_EQ(cost.image_steps, 3 + 3 + 3 + 2 + 2 + 2);
  // A compaction that is ready at once is adopted at once.
  ScriptedDevice quick({0, 2, 3}, 2, true);
  drive_apgd(quick, 3, 10, 0.75, 0.75);
  EXPECT_EQ(quick.log[4], "adopt 2");
}

// ---- the host device on the robust model -----------------------------------------------------------------------------

struct Outcome {
  ApgdRunResult r;
  long image_steps = 0;
};

Outcome run_host(Backend& backend, const AttackSet& set, ApgdLoss loss, int iterations, int lag, bool reverse,
                 const std::vector<int32_t>& target) {
  ApgdRunInput in;
  in.m = set.size();
  in.D = set.D;
  in.K = set.K;
  in.norm = set.norm;
  in.loss = loss;
  in.x0 = set.x0.data();
  in.label = set.label.data();
  in.target = loss == ApgdLoss::DlrTargeted ? target.data() : nullptr;
  in.eps = set.eps.data();
  in.point = set.point.data();
  in.seed = 4;
  in.attack = static_cast<uint32_t>(AttackId::ApgdCe);
  auto dev = make_host_apgd_device(backend, in, lag, reverse);
  Outcome o;
  o.image_steps = drive_apgd(*dev, in.m, iterations, 0.75, 0.75).image_steps;
  o.r = dev->finish();
  return o;
}

TEST(ApgdHostDevice, OutcomeDoesNotDependOnTheCompactionLagOrLaneOrder) {
  REQUIRE_MNIST();
  const int n = 48;
  const Points p = first_test_points(n);
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kRobust));
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    // Radii at which the robust model loses some points and keeps others within 20 iterations.
    const AttackSet set = attack_set(p, n, norm == Norm::L2 ? 2.5f : 0.35f, norm);
    // APGD-T's first target: the most likely class besides the label.
    std::vector<float> probs(static_cast<size_t>(n) * 10);
    backend->predict(set.x0.data(), n, probs.data());
    std::vector<int32_t> target(n);
    for (int i = 0; i < n; ++i) target[i] = argmax_except(probs.data() + i * 10, 10, set.label[i]);
    for (ApgdLoss loss : {ApgdLoss::Ce, ApgdLoss::DlrTargeted}) {
      SCOPED_TRACE(std::string(norm == Norm::L2 ? "L2" : "Linf") + (loss == ApgdLoss::Ce ? " CE" : " targeted DLR"));
      const Outcome base = run_host(*backend, set, loss, 20, 0, false, target);
      int broken = 0;
      for (uint8_t b : base.r.broken) broken += b;
      EXPECT_GT(broken, 0);
      EXPECT_LT(broken, n);
      for (auto [lag, reverse] : {std::pair<int, bool>{1, false}, {3, false}, {0, true}, {2, true}}) {
        const Outcome o = run_host(*backend, set, loss, 20, lag, reverse, target);
        EXPECT_EQ(o.r.broken, base.r.broken) << "lag " << lag << (reverse ? ", reversed lanes" : "");
        EXPECT_EQ(o.r.step, base.r.step) << "lag " << lag;
        for (int e = 0; e < n; ++e) {
          if (!base.r.broken[e]) continue;
          ASSERT_EQ(std::memcmp(o.r.adv.data() + e * 784, base.r.adv.data() + e * 784, 784 * sizeof(float)), 0)
              << "entry " << e << ", lag " << lag;
        }
        // A lagging list carries broken rows for a while: never fewer image-steps than the prompt list.
        if (lag > 0) EXPECT_GE(o.image_steps, base.image_steps);
        else EXPECT_EQ(o.image_steps, base.image_steps);
      }
    }
  }
}

// A backend with its own APGD run: the host device with a lag of 3, standing in for the GPU's.
class LaggingApgdBackend : public testing_support::DelegatingBackend {
 public:
  std::unique_ptr<ApgdDevice> begin_apgd(const ApgdRunInput& in) override {
    ++runs;
    return make_host_apgd_device(inner(), in, 3);
  }
  int runs = 0;
};

TEST(ApgdHostDevice, RunApgdTakesTheBackendsDeviceRunWhenItHasOne) {
  REQUIRE_MNIST();
  const int n = 40;
  const Points p = first_test_points(n);
  const Model model = Model::load(kRobust);
  auto cpu = make_cpu_backend();
  cpu->load_model(model);
  LaggingApgdBackend lagging;
  lagging.load_model(model);
  AttackSet set = attack_set(p, n, 0.35f);
  testing_support::rank_by_clean_logits(*cpu, set);
  const std::vector<int> todo = testing_support::all_entries(n);
  ApgdConfig cfg;
  cfg.iterations = 15;
  cfg.loss = ApgdLoss::DlrTargeted;
  cfg.targets = 2;
  cfg.chunk = 16;  // three runs per target
  AttackRecord a, b;
  a.resize(n, 784);
  b.resize(n, 784);
  const long spent_cpu = run_apgd(*cpu, set, todo, cfg, AttackId::ApgdT, 9, a);
  const long spent_lagging = run_apgd(lagging, set, todo, cfg, AttackId::ApgdT, 9, b);
  EXPECT_GE(lagging.runs, 4);  // 3 chunks of the first target, then those of the second on what is left
  EXPECT_TRUE(testing_support::same_record(a, b));
  // The attack's own count: the rows the lagging list carried after they broke are not the attack's image-steps.
  EXPECT_EQ(spent_lagging, spent_cpu);
  EXPECT_GT(testing_support::count_broken(a), 0);
}

}  // namespace
}  // namespace nudge
