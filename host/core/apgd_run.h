// One APGD run (one restart, or one target of APGD-T) over a set of entries, as a sequence of operations on a
// device that holds every entry's state: the CPU's (host/attack/apgd_host_device.cpp, on any Backend through
// logit_backprop) or the GPU's (host/cuda/cuda_apgd.cpp, where nothing goes back to the host per iteration).
// drive_apgd is the one loop both run.
//
// The live list. The device keeps a list of the rows it computes. Entries that break are marked done at once, and
// every operation skips done rows, so results never depend on when the list drops them. The list is compacted on
// the device after each iteration; its new length reaches the host `compaction_lag()` iterations later, during
// which the host queues further iterations on the old list instead of waiting (the GPU's pipeline never drains).
// A lag of 0 (the CPU) drops broken rows before the next iteration.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "attack_run_result.h"

#include "apgd_math.h"
#include "optimize_types.h"

namespace nudge {

// The iterations after which APGD checks its step size: w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22 and
// p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), for p_j <= 1: 22, 41, 57, 70, 80, 87, 93, 99 for N = 100.
std::vector<int> apgd_checkpoints(int iterations);

// A run's entries and settings. Host pointers, read only while the device is built (begin_apgd copies them).
struct ApgdRunInput {
  int m = 0, D = 0, K = 0;
  Norm norm = Norm::Linf;
  ApgdLoss loss = ApgdLoss::Ce;
  const float* x0 = nullptr;      // [m, D] clean images, the centres of the balls
  const int32_t* label = nullptr; // [m]
  const int32_t* target = nullptr;// [m] targeted DLR's classes; null otherwise
  const float* eps = nullptr;     // [m]
  const uint32_t* point = nullptr;// [m] the points' indices, keys of the draws with eps
  uint64_t seed = 0;
  uint32_t attack = 0;            // AttackId, a key of the draws
  int key_restart = 0;            // restart (APGD-T: target rank * restarts + restart), a key of the draws
};

// Per entry: whether the run broke it, at which iteration, and the misclassified iterate.
using ApgdRunResult = AttackRunResult;

// The operations of a run, in the order drive_apgd calls them; `count` is the length of the live list the host
// knows. Rows of the list that are done are carried and skipped.
class ApgdDevice {
 public:
  virtual ~ApgdDevice() = default;
  // Every entry's random start; the live list becomes every entry, none done.
  virtual void start() = 0;
  // Loss, logit gradient, prediction and input gradient at the current iterate of the list's first `count` rows.
  virtual void evaluate(int count) = 0;
  // The bookkeeping after an evaluation (apgd_track_row).
  virtual void track(int count, const ApgdTrackStep& t) = 0;
  // The step from each live row's current iterate (apgd_step_row), momentum weight alpha.
  virtual void step(int count, float alpha) = 0;
  // Queues the compaction of the list's rows that are not done into the next list; at most one is pending.
  virtual void compact(int count) = 0;
  // Whether the pending compaction's length has reached the host; waits for it when `wait`.
  virtual bool compaction_ready(bool wait) = 0;
  // Makes the compacted list the live list; returns its length. Only after compaction_ready returned true.
  virtual int adopt_compaction() = 0;
  // Iterations the host may run ahead of a pending compaction before it waits.
  virtual int compaction_lag() const = 0;
  // Every entry's outcome (waits for the device).
  virtual ApgdRunResult finish() = 0;
};

// What a run cost: image-steps (each row evaluated, done rows carried by a lagging list included).
struct ApgdRunCost {
  long image_steps = 0;
  int iterations = 0;  // iterations run before every entry was broken or the budget spent
};

// Runs `iterations` APGD iterations of m entries on `dev`: the start, then per iteration a step, an evaluation and
// its tracking, with the momentum weight 1 for the first step and `momentum` after it. on_iteration (may be empty)
// is told each iteration's number as it is queued.
ApgdRunCost drive_apgd(ApgdDevice& dev, int m, int iterations, double momentum, double rho,
                       const std::function<void(int)>& on_iteration = {});

}  // namespace nudge
