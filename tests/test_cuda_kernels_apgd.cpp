// APGD's kernels (kernels/apgd.cu) against the host lanes running the same row code (host/core/apgd_rows.h): each
// kernel on fresh random rows of a shuffled partial list, with outputs poisoned and guarded. The tracking's copies and
// rules and the start's draws must match bit for bit; the loss, its logit gradient and the step within the tolerances
// below. (Whole runs: tests/test_cuda_attack_runs.cpp.)
//
// Tolerances. The step: the device contracts x + alpha (z - x) + (1 - alpha)(x - x_prev) into FMAs, a rounding or two
// of a pixel in [0, 1]: atol 4 ulps of 1 (2.4e-7), and the L2 step's norms (double, the same lane order) add nothing
// visible. The start: x0 + f t contracted, atol 1 ulp of 1. The loss: double exp and log within an ulp or two of
// glibc's, rtol 1e-6 and atol 1e-7 of the logit gradients (|dz| <= 1 for CE, ~1/(z_1 - z_3) for DLR).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "apgd_rows.h"
#include "attacks.h"
#include "cuda_kernel_fixtures.h"
#include "cuda_test_util.h"
#include "optimize_math.h"

#if NUDGE_HAVE_CUDA
#include "apgd.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::CudaKernels;
using test::GuardedBuffer;

constexpr int kD = 784, kK = 10;

// The host's state of `entries` entries and the device copies the kernels read and write.
struct StateCase {
  int entries;
  Norm norm;
  ApgdLoss loss;
  std::vector<float> x0, x, x_prev, x_best, g_best, g_next, adv, eps;
  std::vector<int32_t> label, target;
  std::vector<uint32_t> point;
  std::vector<ApgdEntry> entry;
};

// Device buffers for a StateCase, and the ApgdState over them.
struct DeviceState {
  GuardedBuffer<float> x0, x, x_prev, x_best, g_best, g_next, adv, eps;
  GuardedBuffer<int32_t> label, target;
  GuardedBuffer<uint32_t> point;
  GuardedBuffer<ApgdEntry> entry;
  cuda::ApgdState s;
  explicit DeviceState(const StateCase& c)
      : x0(c.x0), x(c.x), x_prev(c.x_prev), x_best(c.x_best), g_best(c.g_best), g_next(c.g_next), adv(c.adv),
        eps(c.eps),
        label(c.label), target(c.target), point(c.point), entry(c.entry) {
    s.entries = c.entries;
    s.D = kD;
    s.K = kK;
    s.norm = c.norm;
    s.loss = c.loss;
    s.x0 = x0.get();
    s.label = label.get();
    s.target = c.loss == ApgdLoss::DlrTargeted ? target.get() : nullptr;
    s.eps = eps.get();
    s.point = point.get();
    s.x = x.get();
    s.x_prev = x_prev.get();
    s.x_best = x_best.get();
    s.g_best = g_best.get();
    s.g_next = g_next.get();
    s.adv = adv.get();
    s.entry = entry.get();
    s.seed = 77;
    s.attack = 1;
    s.key_restart = 3;
  }
  ::testing::AssertionResult guards() const {
    for (const auto* b : {&x0, &x, &x_prev, &x_best, &g_best, &g_next, &adv, &eps})
      if (!b->guard_intact()) return ::testing::AssertionFailure() << "a float state array was overrun";
    if (!entry.guard_intact()) return ::testing::AssertionFailure() << "the entry array was overrun";
    return ::testing::AssertionSuccess();
  }
};

class CudaApgdKernels : public CudaKernels {
 protected:
  StateCase make_state(int entries, Norm norm, ApgdLoss loss) {
    StateCase c;
    c.entries = entries;
    c.norm = norm;
    c.loss = loss;
    const size_t md = static_cast<size_t>(entries) * kD;
    const float e = norm == Norm::L2 ? 2.0f : 0.3f;
    c.x0 = uniform(md, 0.0f, 1.0f);
    c.x.resize(md);
    c.x_prev.resize(md);
    const std::vector<float> d1 = uniform(md, -e / 28, e / 28), d2 = uniform(md, -e / 28, e / 28);
    for (size_t i = 0; i < md; ++i) {
      c.x[i] = clamp01(c.x0[i] + d1[i]);
      c.x_prev[i] = clamp01(c.x0[i] + d2[i]);
    }
    c.x_best = uniform(md, 0.0f, 1.0f);
    c.g_best = normal(md);
    c.g_next = normal(md);
    c.adv = uniform(md, 0.0f, 1.0f);
    c.eps.assign(entries, e);
    for (int i = 0; i < entries; ++i) {
      c.label.push_back(randint(0, kK - 1));
      c.target.push_back((c.label.back() + randint(1, kK - 1)) % kK);
      c.point.push_back(static_cast<uint32_t>(randint(0, 100000)));
      ApgdEntry s{};
      s.loss_best = uniform01() * 3;
      s.prev = uniform01() * 3;
      s.best_last = uniform01() * 3;
      s.eta = 2 * e * (randint(0, 1) ? 1.0f : 0.5f);
      s.increases = randint(0, 10);
      s.halved_last = randint(0, 1);
      s.done = randint(0, 4) == 0;
      s.broken_step = s.done ? randint(0, 50) : 0;
      c.entry.push_back(s);
    }
    return c;
  }
};

std::vector<float> entry_floats(const std::vector<ApgdEntry>& v) {
  std::vector<float> out;
  for (const ApgdEntry& e : v) {
    out.insert(out.end(), {e.loss_best, e.prev, e.best_last, e.eta});
    out.insert(out.end(), {static_cast<float>(e.increases), static_cast<float>(e.halved_last),
                           static_cast<float>(e.done), static_cast<float>(e.broken_step)});
  }
  return out;
}

TEST_F(CudaApgdKernels, StartIsTheHostRowsStart) {
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    StateCase c = make_state(53, norm, ApgdLoss::Ce);
    DeviceState d(c);
    d.x.poison();
    d.x_prev.poison();
    cuda::apgd_start_cuda(d.s, 0);
    std::vector<double> partial(kApgdPartials);
    for (int e = 0; e < c.entries; ++e) {
      HostLanes b;
      const ApgdKey k{77, 1, 3, c.point[e]};
      apgd_start_row(b, partial.data(), k, c.eps[e], norm, c.x0.data() + e * kD, c.x.data() + e * kD, kD);
    }
    EXPECT_TRUE(all_close("start", d.x.download(), c.x, {1.0 / (1 << 24), 0}));
    EXPECT_TRUE(all_equal("x_prev", d.x_prev.download(), std::vector<float>(c.x.size(), 0.0f)));
    EXPECT_TRUE(
        all_equal("entries", entry_floats(d.entry.download()), entry_floats(std::vector<ApgdEntry>(c.entries))));
    EXPECT_TRUE(d.guards());
  }
}

// One loss, track and step pass over a shuffled partial list, for a track call of each kind: iteration 0 (states
// reset), an ordinary iteration and a checkpoint. The rows are built to reach every branch: most are classified
// correctly (a margin on the label's logit), the kept best losses lie on both sides of the rows' losses and the
// increase counts on both sides of rho * since_check.
TEST_F(CudaApgdKernels, LossTrackAndStepAreTheHostRows) {
  ApgdTrackStep first, plain, check;
  plain.iteration = 7;
  check.iteration = 22;
  check.checkpoint = 1;
  check.since_check = 22;
  int kinds[4] = {0, 0, 0, 0};  // rows broken, improved, halved and done before, over every case
  for (Norm norm : {Norm::Linf, Norm::L2})
    for (ApgdLoss loss : {ApgdLoss::Ce, ApgdLoss::Dlr, ApgdLoss::DlrTargeted})
      for (const ApgdTrackStep& t : {first, plain, check}) {
        SCOPED_TRACE(std::string(norm == Norm::L2 ? "L2" : "Linf") + " loss " + std::to_string(static_cast<int>(loss)) +
                     " iteration " + std::to_string(t.iteration));
        const int entries = 61, count = 45;
        StateCase c = make_state(entries, norm, loss);
        const std::vector<int32_t> list = sample(count, entries);
        std::vector<float> logits = normal(static_cast<size_t>(count) * kK, 3.0f);
        for (int i = 0; i < count; ++i)
          if (randint(0, 4) != 0) logits[static_cast<size_t>(i) * kK + c.label[list[i]]] += 9.0f;
        const std::vector<float> grad = normal(static_cast<size_t>(count) * kD);
        std::vector<float> want_loss(count), want_dz(static_cast<size_t>(count) * kK);
        std::vector<int32_t> want_pred(count);
        for (int i = 0; i < count; ++i) {
          const int e = list[i];
          int pred = 0;
          want_loss[i] = apgd_loss_one(loss, logits.data() + i * kK, kK, c.label[e], c.target[e],
                                       want_dz.data() + i * kK, &pred);
          want_pred[i] = pred;
          // The kept losses around this row's (CE is >= 0, DLR of a correct row < 0): improvements either way.
          ApgdEntry& s = c.entry[e];
          s.loss_best = want_loss[i] + (uniform01() - 0.5f);
          s.prev = want_loss[i] + (uniform01() - 0.5f);
          s.best_last = s.loss_best + (uniform01() - 0.5f) * 0.2f;
          s.increases = randint(0, 22);
        }
        DeviceState d(c);
        GuardedBuffer<int32_t> list_d(list);
        GuardedBuffer<float> logits_d(logits), dlogits_d(static_cast<size_t>(count) * kK), loss_d(count), grad_d(grad);
        GuardedBuffer<int32_t> pred_d(count);
        GuardedBuffer<uint8_t> keep_d(count);
        cuda::ApgdRows r;
        r.count = count;
        r.list = list_d.get();
        r.logits = logits_d.get();
        r.dlogits = dlogits_d.get();
        r.loss = loss_d.get();
        r.pred = pred_d.get();
        r.grad = grad_d.get();
        r.keep = keep_d.get();

        // Loss: per row.
        cuda::apgd_loss_cuda(d.s, r, 0);
        const std::vector<float> got_loss = loss_d.download();
        EXPECT_TRUE(all_close("loss", got_loss, want_loss, {1e-7, 1e-6}));
        EXPECT_TRUE(all_close("dlogits", dlogits_d.download(), want_dz, {1e-7, 1e-6}));
        EXPECT_TRUE(all_equal("pred", pred_d.download(), want_pred));

        // Track, from the device's own losses (so that a last-ulp difference cannot flip an improvement).
        cuda::apgd_track_cuda(d.s, r, t, 0);
        std::vector<uint8_t> want_keep(count);
        for (int i = 0; i < count; ++i) {
          const int e = list[i];
          ApgdMoves moves;
          (void)apgd_track_entry(c.entry[e], got_loss[i], want_pred[i] != c.label[e], c.eps[e], t, &moves);
          kinds[0] += moves.broken;
          kinds[1] += moves.keep_best && t.iteration > 0;
          kinds[2] += moves.go_best;
          kinds[3] += c.entry[e].done != 0;
          const ApgdTrackRow tr{&c.entry[e], got_loss[i], want_pred[i] != c.label[e], c.eps[e], c.x.data() + e * kD,
                                grad.data() + i * kD, c.g_next.data() + e * kD, c.x_best.data() + e * kD,
                                c.g_best.data() + e * kD, c.adv.data() + e * kD, &want_keep[i]};
          HostLanes b;
          apgd_track_row(b, tr, t, kD);
        }
        // Copies and scalar rules only: bit for bit.
        EXPECT_TRUE(all_equal("entries", entry_floats(d.entry.download()), entry_floats(c.entry)));
        EXPECT_TRUE(all_equal("keep", keep_d.download(), want_keep));
        EXPECT_TRUE(all_equal("x", d.x.download(), c.x));
        EXPECT_TRUE(all_equal("g_next", d.g_next.download(), c.g_next));
        EXPECT_TRUE(all_equal("x_best", d.x_best.download(), c.x_best));
        EXPECT_TRUE(all_equal("g_best", d.g_best.download(), c.g_best));
        EXPECT_TRUE(all_equal("adv", d.adv.download(), c.adv));

        // Step, from the state both now hold.
        cuda::apgd_step_cuda(d.s, r, 0.75f, 0);
        std::vector<double> partial(kApgdPartials);
        for (int i = 0; i < count; ++i) {
          const int e = list[i];
          if (c.entry[e].done) continue;
          HostLanes b;
          apgd_step_row(b, partial.data(), c.x.data() + e * kD, c.x_prev.data() + e * kD, c.g_next.data() + e * kD,
                        c.x0.data() + e * kD, kD, c.eps[e], c.entry[e].eta, 0.75f, norm);
        }
        EXPECT_TRUE(all_close("stepped x", d.x.download(), c.x, {4.0 / (1 << 24), 0}));
        EXPECT_TRUE(all_equal("x_prev", d.x_prev.download(), c.x_prev));
        EXPECT_TRUE(d.guards());
        for (const auto* b : {&logits_d, &dlogits_d, &loss_d, &grad_d}) EXPECT_TRUE(b->guard_intact());
        EXPECT_TRUE(keep_d.guard_intact());
        EXPECT_TRUE(pred_d.guard_intact());
      }
  // The cases reached every branch of the tracking (counted on the host, before the rows ran).
  EXPECT_GT(kinds[0], 0) << "no row was broken";
  EXPECT_GT(kinds[1], 0) << "no row improved";
  EXPECT_GT(kinds[2], 0) << "no row went back to its best iterate";
  EXPECT_GT(kinds[3], 0) << "no row was done before";
}

#else  // !NUDGE_HAVE_CUDA

TEST(CudaApgdKernels, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
