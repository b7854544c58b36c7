/* Fused input optimization for the reference architecture (design, budgets and floors: docs/fused-kernel.md).
 *
 *   1x28x28 -> conv3x3 24 -> ReLU -> pool2 (13x13) -> conv3x3 36 -> ReLU -> pool2 floor (5x5, reads 10x10 of 11x11)
 *           -> conv3x3 64 -> ReLU -> flatten (C,H,W) 576 -> dense 64 -> ReLU -> dense 10
 *
 * What:     per launch, `steps` optimize steps (+ an evaluation-only pass with final_eval) for every row of the
 *           active list; per step and image: forward, softmax loss and its logit gradient, goal test and best-iterate
 *           bookkeeping (first goal-meeting iterate kept for good, else the lowest loss), early stop, backward to
 *           the input (no weight gradients), Adam/SGD/sign step, L-inf/L2 projection onto the eps-ball, clamp to
 *           [0,1]. Exactly CpuOptimizeChunk::evaluate_and_update's semantics.
 * Layout:   per-entry state in global memory [entries, 784] / [entries, 10]; weights packed once into the layouts
 *           of layout.cuh (fused_pack_weights_*); activations only in shared memory (layout.cuh).
 * Threads:  448 per block (14 warps, up to 144 registers each), one block per SM (218 KB of shared memory).
 *           A block loops over tiles of up to 8 rows and keeps a tile for all the launch's steps. Each step is a
 *           fixed sequence of phases separated by __syncthreads() (run_step below); inside a phase a thread writes
 *           only what it owns. Each phase's mapping is named in layout.cuh and described at its function. Entries
 *           that stop leave the tile's live list at once; the live images are packed into slots 0..ni-1 at the
 *           start of every step.
 * Precond.: the reference architecture (fused_path_supports); rows distinct; target_class in [0,10) unless Soft;
 *           Adam needs m and v, a norm needs eps; a device with >= 218 KB shared memory per block (sm_90: 227 KB).
 * Numerics: FP32 with FMA contraction, sums in another order than OpenBLAS; the loss, goal test and L2 norm follow
 *           the CPU twins operation by operation (double exp/log/sum). Pool ties go to the first in row-major
 *           order. Deterministic: an entry's results do not depend on its tile-mates, the tile size, the grid or
 *           the steps per launch (every image's arithmetic runs the same instruction sequence).
 * Checked by tests/test_cuda_fused_device.cpp and tests/test_cuda_fused_emulation.cpp: against the CPU backend (on a
 * GPU, and on the host through fused_optimize_emulate, which runs this very block code), thread-order and tile-size
 * invariance, poisoned and guarded outputs, frozen early-stopped entries.
 *
 * Files: block.cuh (the executors that run the block code on the device and on the host, see there why), layout.cuh
 * (shapes, packed weights, shared memory, thread mapping), forward.cuh, loss_goal.cuh, backward.cuh, update.cuh (the
 * phases), and this file (the list of phases, the kernels, the launchers).
 *
 * Cost (docs/fused-kernel.md): 2.68M FMAs issued per image-step (5.24 MFLOP of dense forward + backward-to-input
 * work), ~3.5M thread-instructions; predicted ~170-200 ns per image-step on an H100 SXM against an FP32 floor of
 * 78 ns. Not yet measured.
 */
#include "fused_optimize.cuh"

#include <cmath>
#include <string>
#include <vector>

#include "backward.cuh"
#include "block.cuh"
#include "cuda_check.h"
#include "forward.cuh"
#include "layout.cuh"
#include "loss_goal.cuh"
#include "update.cuh"

namespace nudge::cuda {

namespace {

using namespace fused;

// ---- one step of a tile: its phases, each ended by the block's barrier -------------------------------------------
// With `update` false (the final evaluation) the step ends after the bookkeeping and the best-image copy.
#pragma nv_exec_check_disable
template <class Block>
FUSED_HD void run_step(Block& blk, const FusedParams& p, const Smem& s, int ni, bool update) {
  // Forward: x -> R2; pool1 -> R1; pool2 -> R2; then R1 is block scratch for conv3, dense1, dense2.
  blk.phase([&](int t) { load_x(t, p, s, ni); });
  blk.phase([&](int t) { conv1_pool1(t, s, ni); });
  blk.phase([&](int t) { conv2_pool2(t, s, ni); });
  blk.phase([&](int t) { stage_conv3(t, p, s); });
  blk.phase([&](int t) { conv3_forward(t, s, ni); });
  blk.phase([&](int t) { dense1_partial(t, p, s, ni); });
  blk.phase([&](int t) { dense1_reduce(t, p, s, ni); });
  blk.phase([&](int t) { dense2_forward(t, p, s, ni); });

  // Loss, goal and best-iterate bookkeeping, one thread per image.
  blk.phase([&](int t) { track_image(t, p, s, ni); });

  // Backward to the input: dz -> dA4 -> dA3 -> dP2 (R2) -> dP1 (R1) -> dx (R2).
  blk.phase([&](int t) {
    copy_best_image(t, p, s, ni);
    if (update) dense2_backward(t, p, s, ni);
  });
  if (!update) return;
  blk.phase([&](int t) { dense1_backward(t, p, s, ni); });
  blk.phase([&](int t) { conv3_backward(t, s, ni); });
  blk.phase([&](int t) {
    conv2_backward(t, s, ni);
    zero_dp1_edge(t, s, ni);
  });
  blk.phase([&](int t) { conv1_backward(t, s, ni); });

  // The optimizer step and the projection; L2 needs the whole image's norm first, hence a second phase.
  const bool l2 = p.norm == Norm::L2;
  blk.phase([&](int t) { optimizer_step(t, p, s, ni, l2); });
  if (!l2) return;
  blk.phase([&](int t) { l2_project(t, p, s, ni); });
}

// ---- a block: stage conv1/conv2, then tiles, each for all the launch's steps -------------------------------------
#pragma nv_exec_check_disable
template <class Block>
FUSED_HD void fused_block(Block& blk, const FusedParams& p, const Smem& s, int block, int grid) {
  blk.phase([&](int t) {
    const float4* src = reinterpret_cast<const float4*>(p.weights);
    float4* dst = reinterpret_cast<float4*>(s.w());
    for (int i = t; i < kStageW12 / 4; i += kThreads) dst[i] = ldg(src + i);
  });
  const int tiles = (p.count + p.tile - 1) / p.tile;
  const int passes = p.steps + (p.final_eval ? 1 : 0);
  for (int tile = block; tile < tiles; tile += grid) {
    const int first = tile * p.tile;
    const int n_tile = imin(p.tile, p.count - first);
    // Thread = tile slot.
    blk.phase([&](int t) {
      if (t >= n_tile) return;
      s.misc[kMsEntry + t] = p.rows ? p.rows[first + t] : first + t;
      s.misc[kMsLive + t] = 1;
    });
    for (int pass = 0; pass < passes; ++pass) {
      // The live list, by one thread: slots still active, in slot order.
      blk.phase([&](int t) {
        if (t != 0) return;
        int n = 0;
        for (int slot = 0; slot < n_tile; ++slot)
          if (s.misc[kMsLive + slot]) {
            s.misc[kMsLiveSlot + n] = slot;
            s.misc[kMsLiveEntry + n] = s.misc[kMsEntry + slot];
            ++n;
          }
        s.misc[kMsNLive] = n;
      });
      // Read by every thread after the barrier; next written in the next pass, several barriers later.
      const int ni = s.misc[kMsNLive];
      if (ni == 0) break;
      run_step(blk, p, s, ni, pass < p.steps);
    }
    if (p.keep)
      blk.phase([&](int t) {
        if (t < n_tile) p.keep[first + t] = s.misc[kMsLive + t] ? 1 : 0;
      });
  }
}

__global__ void __launch_bounds__(kThreads, 1) fused_optimize_kernel(const FusedParams p) {
  extern __shared__ float4 fused_smem[];
  DeviceBlock blk;
  fused_block(blk, p, make_smem(reinterpret_cast<float*>(fused_smem)), static_cast<int>(blockIdx.x),
              static_cast<int>(gridDim.x));
}

// One thread per packed element (packed_value, layout.cuh).
__global__ void fused_pack_kernel(const FusedWeightSources src, float* __restrict__ packed) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < kPkCount; i += gridDim.x * blockDim.x)
    packed[i] = packed_value(i, src);
}

void check_params(const char* op, const FusedParams& p) {
  if (p.count < 0 || p.steps < 0) throw_shape_error(op, "needs count >= 0 and steps >= 0");
  if (p.tile < 1 || p.tile > kFusedTileMax)
    throw_shape_error(op, "tile must be in 1.." + std::to_string(kFusedTileMax) + " (got " + std::to_string(p.tile) +
                              ")");
  if (!p.weights || !p.x || !p.x0 || !p.target_dist || !p.target_kind || !p.target_class || !p.steps_done ||
      !p.goal_reached || !p.best_loss || !p.best_probs || !p.best_images || !p.success_step)
    throw_shape_error(op, "weights, x, x0, targets and every bookkeeping array are required");
  if (p.optimizer == InputOptimizer::Adam && (!p.m || !p.v)) throw_shape_error(op, "Adam needs m and v");
  if (p.norm != Norm::None && !p.eps) throw_shape_error(op, "a norm ball needs eps");
}

}  // namespace

size_t fused_packed_weight_count() { return kPkCount; }
size_t fused_smem_bytes() { return kSmemBytes; }

void fused_pack_weights_cuda(const FusedWeightSources& src, float* packed, cudaStream_t stream) {
  for (const float* t : src.tensor)
    if (!t) throw_shape_error("fused_pack_weights_cuda", "all 10 parameter tensors are required");
  fused_pack_kernel<<<(kPkCount + 255) / 256, 256, 0, stream>>>(src, packed);
  check_launch("fused_pack_weights_cuda", stream);
}

void fused_pack_weights_host(const FusedWeightSources& src, float* packed) {
  for (const float* t : src.tensor)
    if (!t) throw_shape_error("fused_pack_weights_host", "all 10 parameter tensors are required");
  for (int i = 0; i < kPkCount; ++i) packed[i] = packed_value(i, src);
}

void fused_optimize_cuda(const FusedParams& p, int max_blocks, cudaStream_t stream) {
  check_params("fused_optimize_cuda", p);
  if (max_blocks < 1) throw_shape_error("fused_optimize_cuda", "needs max_blocks >= 1");
  if (p.count == 0 || (p.steps == 0 && !p.final_eval)) return;
  const int tiles = (p.count + p.tile - 1) / p.tile;
  // A per-function attribute, not state of ours; setting it on every launch costs a few microseconds at most.
  CUDA_CHECK(cudaFuncSetAttribute(fused_optimize_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(kSmemBytes)));
  fused_optimize_kernel<<<tiles < max_blocks ? tiles : max_blocks, kThreads, kSmemBytes, stream>>>(p);
  check_launch("fused_optimize_cuda", stream);
}

void fused_optimize_emulate(const FusedParams& p, int blocks, bool reverse_threads) {
  check_params("fused_optimize_emulate", p);
  if (blocks < 1) throw_shape_error("fused_optimize_emulate", "needs blocks >= 1");
  if (p.count == 0 || (p.steps == 0 && !p.final_eval)) return;
  std::vector<float4> smem(kSmemBytes / sizeof(float4));
  for (int b = 0; b < blocks; ++b) {
    float* base = reinterpret_cast<float*>(smem.data());
    for (int i = 0; i < kSmFloats; ++i) base[i] = NAN;
    HostBlock blk{reverse_threads};
    fused_block(blk, p, make_smem(base), b, blocks);
  }
}

}  // namespace nudge::cuda
