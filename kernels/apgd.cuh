// APGD's kernels: the random start, the loss and logit gradient per row, the bookkeeping after an evaluation and
// the step. Their per-row code is host/core/apgd_rows.h and apgd_math.h, which the CPU run executes too
// (host/attack/apgd_host_device.cpp). Rows are positions in the live list (`list`), entries index the state.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "apgd_math.h"
#include "optimize_types.h"

namespace nudge::cuda {

// Every entry's state, [entries, ...]; device memory.
struct ApgdState {
  int entries = 0, D = 0, K = 0;
  Norm norm = Norm::Linf;
  ApgdLoss loss = ApgdLoss::Ce;
  const float* x0 = nullptr;        // [entries, D]
  const int32_t* label = nullptr;   // [entries]
  const int32_t* target = nullptr;  // [entries] targeted DLR only, else null
  const float* eps = nullptr;       // [entries]
  const uint32_t* point = nullptr;  // [entries]
  float* x = nullptr;               // [entries, D] the current iterate
  float* x_prev = nullptr;          // [entries, D]
  float* x_best = nullptr;          // [entries, D]
  float* g_best = nullptr;          // [entries, D]
  float* g_next = nullptr;          // [entries, D] the gradient the next step uses
  float* adv = nullptr;             // [entries, D]
  ApgdEntry* entry = nullptr;       // [entries]
  uint64_t seed = 0;
  uint32_t attack = 0;
  int key_restart = 0;
};

// One evaluation's rows: row i is entry list[i].
struct ApgdRows {
  int count = 0;
  const int32_t* list = nullptr;  // [count]
  const float* logits = nullptr;  // [count, K]
  float* dlogits = nullptr;       // [count, K]
  float* loss = nullptr;          // [count]
  int32_t* pred = nullptr;        // [count]
  const float* grad = nullptr;    // [count, D] input gradients of the rows' iterates
  uint8_t* keep = nullptr;        // [count] out of tracking: entry not done
};

// x of every entry = its random start; x_prev = 0; entry states zeroed.
void apgd_start_cuda(const ApgdState& s, cudaStream_t stream);
// loss, dlogits and pred of each row from its logits.
void apgd_loss_cuda(const ApgdState& s, const ApgdRows& r, cudaStream_t stream);
// apgd_track_row for each row.
void apgd_track_cuda(const ApgdState& s, const ApgdRows& r, const ApgdTrackStep& t, cudaStream_t stream);
// apgd_step_row for each row whose entry is not done.
void apgd_step_cuda(const ApgdState& s, const ApgdRows& r, float alpha, cudaStream_t stream);

}  // namespace nudge::cuda
