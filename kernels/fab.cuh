// FAB-T's kernels: the start, each row's linearised boundary from its logits and the iteration's update, so that an
// iteration is queued with no host round trip. Their per-row code is host/core/fab_rows.h, which the CPU run executes
// too (host/attack/fab_host_device.cpp). Rows are positions in the live list (`list`), entries index the state.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "fab_rows.h"

namespace nudge::cuda {

// Every entry's state, [entries, ...]; device memory.
struct FabState {
  int entries = 0, D = 0, K = 0;
  const float* x0 = nullptr;        // [entries, D]
  const int32_t* label = nullptr;   // [entries]
  const int32_t* target = nullptr;  // [entries] the class of each entry's boundary, != its label
  const float* eps = nullptr;       // [entries]
  float* x = nullptr;               // [entries, D] the current iterate
  float* adv = nullptr;             // [entries, D]
  FabEntry* entry = nullptr;        // [entries]
};

// One evaluation's rows: row i is entry list[i].
struct FabRows {
  int count = 0;
  const int32_t* list = nullptr;  // [count]
  const float* logits = nullptr;  // [count, K]
  float* dlogits = nullptr;       // [count, K] the logit gradient of g, out of the boundary
  float* g = nullptr;             // [count] z_y - z_t
  int32_t* pred = nullptr;        // [count]
  const float* grad = nullptr;    // [count, D] input gradients of g; null when the evaluation took none
  uint8_t* keep = nullptr;        // [count] out of the update: entry not done
};

// x of every entry = x0, adv = 0, entry states reset (none done).
void fab_start_cuda(const FabState& s, cudaStream_t stream);
// g, dlogits and pred of each row from its logits (fab_boundary_one).
void fab_boundary_cuda(const FabState& s, const FabRows& r, cudaStream_t stream);
// fab_update_row for each row (after fab_update_prepare(D)); r.grad is needed when st.need_grad. Rows whose entry
// is done only get keep = 0.
void fab_update_cuda(const FabState& s, const FabRows& r, const FabStep& st, cudaStream_t stream);
// The shared memory one row's update needs (its FabScratch): 24.2 KiB at D = 784. Above 48 KiB fab_update_prepare
// raises the kernel's limit, which fails beyond the device's opt-in maximum (227 KiB on sm_90: D up to ~8,192).
size_t fab_update_shared_bytes(int D);
// Raises the update kernel's shared memory limit for images of D pixels, on the current device: once per run, before
// its first fab_update_cuda, not per launch. (Runs of different D on one device at once would race on the limit; the
// attack runs one FAB-T run per device at a time.)
void fab_update_prepare(int D);

// The update's sort alone, for its test against std::sort: for each of `rows` rows, pairs 0..n-1 of key and idx
// ([rows, fab_sort_capacity(n)] device memory, the padding's room included) into ascending (key, idx) order.
void fab_sort_pairs_cuda(double* key, int32_t* idx, int rows, int n, cudaStream_t stream);

}  // namespace nudge::cuda
