// One Square run, L-inf or L2 (one restart over a set of entries) as a sequence of operations on a device that holds every
// entry's state, the twin of apgd_run.h: the CUDA backend's (host/cuda/cuda_square.cpp), where an iteration is queued
// with no host round trip, and the tests' host device (tests/support/square_host_device.cpp), which checks the loop
// and the rows against the CPU attack. The CPU backend runs Square through its forward sessions instead
// (host/attack/attack_square.cpp), with the same rows (square_rows.h).
//
// The live list works as APGD's: broken entries are marked done at once and skipped, and a compaction's length
// reaches the host `compaction_lag()` iterations after it was queued.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "attack_run_result.h"
#include "optimize_types.h"

namespace nudge {

// A run's entries. Host pointers, read only while the device is built.
struct SquareRunInput {
  int m = 0, H = 0, W = 0, K = 0;
  Norm norm = Norm::Linf;
  // L2: the windows' patterns, square_l2_pattern_table(min(H, W) - 1) (attacks.h), square_pattern_offset(min(H, W))
  // doubles; null for L-inf.
  const double* patterns = nullptr;
  size_t pattern_count = 0;
  const float* x0 = nullptr;       // [m, H*W]
  const int32_t* label = nullptr;  // [m]
  const float* eps = nullptr;      // [m]
  const uint32_t* point = nullptr; // [m]
  uint64_t seed = 0;
  uint32_t attack = 0;  // AttackId::Square, a key of the draws
  int restart = 0;
};

using SquareRunResult = AttackRunResult;

class SquareDevice {
 public:
  virtual ~SquareDevice() = default;
  // Every entry's start (square_linf_start_row, square_l2_start_row); the live list becomes every entry.
  virtual void start() = 0;
  // Iteration it's candidates for the list's first `count` rows (square_linf_propose_row, square_l2_propose_row),
  // windows of side `side`.
  virtual void propose(int count, int it, int side) = 0;
  // The margins of the candidates (it = 0: of the starts, for every entry) and their acceptance (square_accept_row).
  virtual void evaluate(int count, int it) = 0;
  virtual void compact(int count) = 0;
  virtual bool compaction_ready(bool wait) = 0;
  virtual int adopt_compaction() = 0;
  virtual int compaction_lag() const = 0;
  virtual SquareRunResult finish() = 0;
};

// Runs `queries` forward passes per entry (the start's included) of m entries; side(it) is the window side of
// iteration it. on_iteration (may be empty) is told each iteration as it is queued. Returns the rows evaluated.
long drive_square(SquareDevice& dev, int m, int queries, const std::function<int(int)>& side,
                  const std::function<void(int)>& on_iteration = {});

}  // namespace nudge
