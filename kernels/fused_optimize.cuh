// The fused input-optimization kernel for the reference architecture (docs/fused-kernel.md): whole optimize steps
// (forward, loss, goal and best-iterate bookkeeping, backward to the input, optimizer step and projection) for a
// tile of images per thread block. CPU twin: the CPU backend's optimize chunk as a whole (CpuOptimizeChunk in
// host/cpu/cpu_backend.cpp, with loss_forward_backward_one, goal_met and input_update_one).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "optimize_types.h"

namespace nudge::cuda {

constexpr int kFusedTileMax = 8;        // images per block tile, at most
constexpr int kFusedParamTensors = 10;  // conv1.weight, conv1.bias, ..., dense2.bias (Architecture::params() order)

// The model's parameter tensors in Architecture::params() order, PyTorch layouts (device pointers for
// fused_pack_weights_cuda, host pointers for fused_pack_weights_host).
struct FusedWeightSources {
  const float* tensor[kFusedParamTensors] = {};
};

// Floats in the packed weight buffer (the layouts the kernel reads, see fused/layout.cuh).
size_t fused_packed_weight_count();
// Bytes of dynamic shared memory one block uses.
size_t fused_smem_bytes();

// Packs the parameters into `packed` (fused_packed_weight_count() floats, device memory).
void fused_pack_weights_cuda(const FusedWeightSources& src, float* packed, cudaStream_t stream);
void fused_pack_weights_host(const FusedWeightSources& src, float* packed);

// One launch: `steps` optimize steps, then (with final_eval) one more evaluation without an update, for the
// entries of rows[0..count). Step semantics are CpuOptimizeChunk's: each step evaluates the current iterate
// (loss, probabilities, goal, best iterate, success step), an entry that meets its goal under early stopping stops
// there, and each entry still active gets one update with its own step count.
// Per-entry arrays are indexed by entry, [entries, D] or [entries, K] with D = 784, K = 10.
struct FusedParams {
  const float* weights = nullptr;       // packed (fused_pack_weights_*)
  const int32_t* rows = nullptr;        // [count] the entry of each row (the active list); null: row i is entry i
  int count = 0;                        // rows of this launch; distinct entries
  int tile = kFusedTileMax;             // images per block tile, 1..kFusedTileMax (performance only)
  int steps = 1;                        // updates to apply, >= 0
  bool final_eval = false;              // then evaluate once more without updating (finish())

  float* x = nullptr;                   // [entries, D] iterates, updated in place
  const float* x0 = nullptr;            // [entries, D] centres of the eps-balls
  float* m = nullptr;                   // [entries, D] Adam moments (Adam only)
  float* v = nullptr;
  const float* target_dist = nullptr;   // [entries, K]
  const int32_t* target_kind = nullptr; // [entries] TargetKind
  const int32_t* target_class = nullptr;// [entries] in [0, K) unless Soft
  const float* eps = nullptr;           // [entries] radii (read unless norm is None)
  int32_t* steps_done = nullptr;        // [entries] updates applied so far
  uint8_t* goal_reached = nullptr;      // [entries]
  float* best_loss = nullptr;           // [entries] start at +inf
  float* best_probs = nullptr;          // [entries, K]
  float* best_images = nullptr;         // [entries, D]
  int32_t* success_step = nullptr;      // [entries] start at -1
  uint8_t* keep = nullptr;              // [count] out: 1 if the row's entry is still active after the launch; or null
  int32_t* start_class = nullptr;       // [entries] out, or null: argmax of the first evaluation (steps_done 0, so x
                                        // is still the first iterate), first maximum on ties as std::max_element

  LossKind loss = LossKind::CrossEntropy;
  InputOptimizer optimizer = InputOptimizer::Adam;
  Norm norm = Norm::None;
  float lr = 0.1f, beta1 = 0.9f, beta2 = 0.999f, adam_eps = 1e-7f;
  float kappa = 0.0f, stop_prob = 0.0f, stop_kl = 1e-3f;
  bool early_stop = false;
};

// Launches at most `max_blocks` blocks (one per SM is what fits); each loops over tiles of p.tile rows.
void fused_optimize_cuda(const FusedParams& p, int max_blocks, cudaStream_t stream);

// The kernel's own block code run on the host, for checking its logic without a GPU: `blocks` blocks one after
// another, each phase thread by thread (in reverse thread order with `reverse_threads`: a result that changes with
// the order exposes two threads of one phase touching the same data). All pointers in `p` are host memory.
// Shared memory starts as NaN in every block, so a read of anything not written first poisons the results.
void fused_optimize_emulate(const FusedParams& p, int blocks, bool reverse_threads);

}  // namespace nudge::cuda
