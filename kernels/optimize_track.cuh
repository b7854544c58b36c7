// The optimize chunk's per-iterate bookkeeping: goal test, best iterate, success step, early stop. CPU twin: goal_met
// (host/core/optimize_math.h) and the bookkeeping in CpuOptimizeChunk::evaluate_and_update (host/cpu/cpu_backend.cpp).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

struct TrackParams {
  int rows = 0, K = 0, D = 0;
  const int32_t* entry = nullptr;         // [rows] the active entries, row i evaluates entry entry[i]
  const float* probs = nullptr;           // [rows, K] of the iterates just evaluated
  const float* loss = nullptr;            // [rows]
  const float* x = nullptr;               // [entries, D] those iterates
  const float* target_dist = nullptr;     // [entries, K]
  const int32_t* target_kind = nullptr;   // [entries] TargetKind
  const int32_t* target_class = nullptr;  // [entries]
  const int32_t* steps_done = nullptr;    // [entries] updates applied so far
  float stop_prob = 0.0f, stop_kl = 0.0f; // StepConfig's goals
  bool early_stop = false;
  uint8_t* goal_reached = nullptr;        // [entries] in/out
  float* best_loss = nullptr;             // [entries] in/out
  float* best_probs = nullptr;            // [entries, K] in/out
  float* best_images = nullptr;           // [entries, D] in/out
  int32_t* success_step = nullptr;        // [entries] in/out
  uint8_t* keep = nullptr;                // [rows] out: 0 when the entry met its goal and early_stop is on
};

void optimize_track_cuda(const TrackParams& p, cudaStream_t stream);

}  // namespace nudge::cuda
