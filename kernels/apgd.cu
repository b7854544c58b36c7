/* APGD on the device (the ApgdDevice of host/cuda/cuda_apgd.cpp): the start, loss, track and step of an APGD run,
 * so that an iteration is queued with no host round trip.
 *   start:  x = clamp01(x0 + eps t / |t|), t uniform in [-1, 1]^D from the entry's keyed draws (apgd_start_row)
 *   loss:   CE, DLR or targeted DLR of the row's logits, its logit gradient and argmax (apgd_loss_one)
 *   track:  best iterate, increases, checkpoint halving, broken entries recorded (apgd_track_row)
 *   step:   z = P(x + eta dir(g)), x = P(x + alpha (z - x) + (1 - alpha)(x - x_prev)) (apgd_step_row)
 * Layout:    state by entry [entries, D]; logits, dlogits, loss, pred, grad, keep by row of the list; row-major.
 * Threads:   start, track, step: one block of kRowLanes = 256 threads per row (entry for start), the block's
 *            phases from apgd_rows.h with a barrier after each; pixels lane, lane + 256, ... are a thread's, so the
 *            row's loads are coalesced. loss: one thread per row (K is ~10), grid-stride.
 * Precond.:  list holds distinct entries; labels and targets are valid classes (checked on the host before upload);
 *            step only after a track of the same list's rows.
 * Numerics:  the same source as the CPU run's rows; FMAs make pixels differ by an ulp or so, and the draws match bit
 *            for bit.
 * Checked by tests/test_cuda_kernels_apgd.cpp (each kernel against the host lanes on random rows),
 *            tests/test_cuda_attack_runs.cpp (whole runs against the CPU backend's on the robust model) and the row
 *            code by tests/test_apgd_run.cpp.
 *
 * Registers: start 37, loss 56, track 40, step 48; ptxas reports a 12-byte spill in step, which is the call frame
 *            of the double division's slow path (g / |g|, L2 only; with a multiplication it is gone) and costs
 *            nothing on the common path.
 * Cost per row and iteration (D = 784): step reads x, x_prev, g, x0 and writes x, x_prev: 24 B/pixel, ~19 KB;
 * track reads x, g and writes g_next (+ x_best, g_best on an improvement): 12-20 B/pixel. A 2,048-row chunk moves
 * ~80 MB per iteration, ~30 us at 3 TB/s, beside the network's ~1 ms forward and backward at that size.
 */
#include "apgd.cuh"

#include "apgd_rows.h"
#include "block_lanes.cuh"
#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

__global__ void __launch_bounds__(kRowLanes) apgd_start_kernel(ApgdState s) {
  __shared__ double partial[kApgdPartials];
  const int e = blockIdx.x;
  const size_t row = static_cast<size_t>(e) * s.D;
  BlockLanes b;
  const ApgdKey k{s.seed, s.attack, s.key_restart, s.point[e]};
  apgd_start_row(b, partial, k, s.eps[e], s.norm, s.x0 + row, s.x + row, s.D);
  for (int i = threadIdx.x; i < s.D; i += kRowLanes) s.x_prev[row + i] = 0.0f;
  if (threadIdx.x == 0) s.entry[e] = ApgdEntry{};
}

// Grid-stride: elementwise_blocks caps the grid, so a list longer than the cap's threads is still covered.
__global__ void apgd_loss_kernel(ApgdState s, ApgdRows r) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < r.count; i += gridDim.x * blockDim.x) {
    const int e = r.list[i];
    int pred = 0;
    r.loss[i] = apgd_loss_one(s.loss, r.logits + static_cast<size_t>(i) * s.K, s.K, s.label[e],
                              s.target ? s.target[e] : -1, r.dlogits + static_cast<size_t>(i) * s.K, &pred);
    r.pred[i] = pred;
  }
}

__global__ void __launch_bounds__(kRowLanes) apgd_track_kernel(ApgdState s, ApgdRows r, ApgdTrackStep t) {
  const int i = blockIdx.x, e = r.list[i];
  const size_t row = static_cast<size_t>(e) * s.D;
  const ApgdTrackRow tr{s.entry + e, r.loss[i], r.pred[i] != s.label[e], s.eps[e], s.x + row,
                        r.grad + static_cast<size_t>(i) * s.D, s.g_next + row, s.x_best + row, s.g_best + row,
                        s.adv + row, r.keep + i};
  BlockLanes b;
  apgd_track_row(b, tr, t, s.D);
}

__global__ void __launch_bounds__(kRowLanes) apgd_step_kernel(ApgdState s, ApgdRows r, float alpha) {
  __shared__ double partial[kApgdPartials];
  const int e = r.list[blockIdx.x];
  const ApgdEntry st = s.entry[e];
  if (st.done) return;  // uniform for the block: every thread read the same state
  const size_t row = static_cast<size_t>(e) * s.D;
  BlockLanes b;
  apgd_step_row(b, partial, s.x + row, s.x_prev + row, s.g_next + row, s.x0 + row, s.D, s.eps[e], st.eta, alpha,
                s.norm);
}

void check_state(const ApgdState& s, const char* op) {
  if (s.entries < 0 || s.D <= 0 || s.K < 2) throw_shape_error(op, "needs entries >= 0, D > 0 and K >= 2");
  if (!s.x0 || !s.label || !s.eps || !s.point || !s.x || !s.x_prev || !s.x_best || !s.g_best || !s.g_next || !s.adv ||
      !s.entry)
    throw_shape_error(op, "a state array is missing");
  if (s.loss == ApgdLoss::DlrTargeted && !s.target) throw_shape_error(op, "the targeted DLR loss needs targets");
}

void check_rows(const ApgdRows& r, const char* op) {
  if (r.count < 0 || !r.list) throw_shape_error(op, "needs count >= 0 and a list");
}

}  // namespace

void apgd_start_cuda(const ApgdState& s, cudaStream_t stream) {
  check_state(s, "apgd_start_cuda");
  if (s.entries == 0) return;
  apgd_start_kernel<<<s.entries, kRowLanes, 0, stream>>>(s);
  check_launch("apgd_start_cuda", stream);
}

void apgd_loss_cuda(const ApgdState& s, const ApgdRows& r, cudaStream_t stream) {
  check_state(s, "apgd_loss_cuda");
  check_rows(r, "apgd_loss_cuda");
  if (!r.logits || !r.dlogits || !r.loss || !r.pred) throw_shape_error("apgd_loss_cuda", "logits, dlogits, loss, pred");
  if (r.count == 0) return;
  apgd_loss_kernel<<<elementwise_blocks(r.count), kElementwiseThreads, 0, stream>>>(s, r);
  check_launch("apgd_loss_cuda", stream);
}

void apgd_track_cuda(const ApgdState& s, const ApgdRows& r, const ApgdTrackStep& t, cudaStream_t stream) {
  check_state(s, "apgd_track_cuda");
  check_rows(r, "apgd_track_cuda");
  if (!r.loss || !r.pred || !r.grad || !r.keep) throw_shape_error("apgd_track_cuda", "loss, pred, grad, keep");
  if (r.count == 0) return;
  apgd_track_kernel<<<r.count, kRowLanes, 0, stream>>>(s, r, t);
  check_launch("apgd_track_cuda", stream);
}

void apgd_step_cuda(const ApgdState& s, const ApgdRows& r, float alpha, cudaStream_t stream) {
  check_state(s, "apgd_step_cuda");
  check_rows(r, "apgd_step_cuda");
  if (r.count == 0) return;
  apgd_step_kernel<<<r.count, kRowLanes, 0, stream>>>(s, r, alpha);
  check_launch("apgd_step_cuda", stream);
}

}  // namespace nudge::cuda
