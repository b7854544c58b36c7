// One FAB-T run (one target rank over a set of entries) as a sequence of operations on a device that holds every
// entry's state, the twin of apgd_run.h and square_run.h: the CPU's (host/attack/fab_host_device.cpp, on any Backend
// through logit_backprop) or the GPU's (host/cuda/cuda_fab.cpp, where nothing goes back to the host per iteration).
// drive_fab is the one loop both run. The live list works as APGD's: broken entries are marked done at once and
// skipped, and a compaction's length reaches the host `compaction_lag()` iterations after it was queued.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "attack_run_result.h"
#include "fab_rows.h"
#include "optimize_types.h"

namespace nudge {

// A run's entries and settings. Host pointers, read only while the device is built.
struct FabRunInput {
  int m = 0, D = 0, K = 0;
  Norm norm = Norm::Linf;
  const float* x0 = nullptr;       // [m, D] clean images, where every entry starts
  const int32_t* label = nullptr;  // [m]
  const int32_t* target = nullptr; // [m] the class each entry's boundary is taken with
  const float* eps = nullptr;      // [m]
  float alpha_max = 0.1f, eta = 1.05f, beta = 0.9f;
};

using FabRunResult = AttackRunResult;

class FabDevice {
 public:
  virtual ~FabDevice() = default;
  // Every entry at its clean point, none done; the live list becomes every entry.
  virtual void start() = 0;
  // g = z_y - z_t, the prediction and (need_grad) the input gradient of g at the list's first `count` rows.
  virtual void evaluate(int count, bool need_grad) = 0;
  // fab_update_row for those rows.
  virtual void update(int count, const FabStep& st) = 0;
  virtual void compact(int count) = 0;
  virtual bool compaction_ready(bool wait) = 0;
  virtual int adopt_compaction() = 0;
  virtual int compaction_lag() const = 0;
  // Every entry's outcome (waits for the device).
  virtual FabRunResult finish() = 0;
};

// Runs FAB's evaluations 0..iterations of m entries (a step after each but the last), with the settings of `in`.
// on_iteration (may be empty) is told each evaluation's number as it is queued. Returns the rows evaluated.
long drive_fab(FabDevice& dev, int m, int iterations, const FabRunInput& in,
               const std::function<void(int)>& on_iteration = {});

}  // namespace nudge
