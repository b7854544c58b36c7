/* Best-iterate bookkeeping of an optimize chunk, after each evaluation of the active entries' iterates.
 *
 * For row i (entry e = entry[i]):
 *   met = goal_met(probs[i])   OneHot: p[c] >= stop_prob (argmax == c when stop_prob <= 0); Untargeted: argmax != y
 *                              (and p[y] <= 1 - stop_prob when stop_prob > 0); Soft: KL(t || p) <= stop_kl
 *   if !goal_reached[e] and (met or loss[i] < best_loss[e]): best_loss, best_probs, best_images[e] = this iterate;
 *       if met: goal_reached[e] = 1, success_step[e] = steps_done[e]    (the first success is kept for good)
 *   keep[i] = !(met and early_stop)
 * exactly as CpuOptimizeChunk::evaluate_and_update, with the CPU's own goal_met (host/core/optimize_math.h).
 * Layout:    row-indexed inputs [rows, ...], entry-indexed state [entries, ...], row-major.
 * Threads:   one warp per row, 8 rows per 256-thread block. Lane 0 decides (K is small), the decision is broadcast with
 *            a shuffle, and the whole warp copies the D pixels of an improved iterate (coalesced).
 * Precond.:  entries in `entry` are distinct (each entry's state is written by one warp only).
 * Checked by tests/test_cuda_kernels_optimize.cpp: CudaLossKernels.OptimizeTrack.
 *
 * Cost: ~10 flops per class per row; bytes ~ 4K read per row plus 4(D + K) written per improved row. Before any
 * success nearly every row improves (the loss keeps falling), so the copy dominates: 100k rows x 3 KB = 300 MB,
 * ~0.1 ms on an H100.
 */
#include "optimize_track.cuh"

#include "cuda_check.h"
#include "optimize_math.h"

namespace nudge::cuda {

namespace {

constexpr int kThreads = 256, kRowsPerBlock = kThreads / 32;

__global__ void __launch_bounds__(kThreads) optimize_track_kernel(TrackParams p) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (i >= p.rows) return;  // uniform per warp
  const int e = p.entry[i];
  const int K = p.K;
  const float* probs = p.probs + static_cast<size_t>(i) * K;
  int decision = 0;  // bit 0: improved, bit 1: met
  if (lane == 0) {
    const float* t = p.target_dist + static_cast<size_t>(e) * K;
    const bool met = goal_met(probs, K, t, static_cast<TargetKind>(p.target_kind[e]), p.target_class[e],
                              p.stop_prob, p.stop_kl);
    const float loss = p.loss[i];
    const bool improved = !p.goal_reached[e] && (met || loss < p.best_loss[e]);
    if (improved) {
      p.best_loss[e] = loss;
      if (met) {
        p.goal_reached[e] = 1;
        p.success_step[e] = p.steps_done[e];
      }
    }
    p.keep[i] = !(met && p.early_stop);
    decision = (improved ? 1 : 0) | (met ? 2 : 0);
  }
  decision = __shfl_sync(0xffffffffu, decision, 0);
  if (!(decision & 1)) return;
  for (int j = lane; j < K; j += 32) p.best_probs[static_cast<size_t>(e) * K + j] = probs[j];
  const float* src = p.x + static_cast<size_t>(e) * p.D;
  float* dst = p.best_images + static_cast<size_t>(e) * p.D;
  for (int j = lane; j < p.D; j += 32) dst[j] = src[j];
}

}  // namespace

void optimize_track_cuda(const TrackParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.K < 2 || p.D <= 0) throw_shape_error("optimize_track_cuda", "needs rows >= 0, K >= 2, D > 0");
  if (p.rows == 0) return;
  const unsigned blocks = static_cast<unsigned>((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  optimize_track_kernel<<<blocks, kThreads, 0, stream>>>(p);
  check_launch("optimize_track_cuda", stream);
}

}  // namespace nudge::cuda
