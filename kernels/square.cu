/* L-inf Square on the device (the SquareDevice of host/cuda/cuda_square.cpp): the start, the candidates and their
 * acceptance of one restart, so that an iteration is queued with no host round trip.
 *   start:   best = clamp01(x0 +- eps by column), the signs keyed draws (square_linf_start_row)
 *   propose: cand = best with one s x s window set to clamp01(x0 + sign eps), flipped once if that changed nothing
 *            (square_linf_propose_row)
 *   accept:  margin z_y - max_{i != y} z_i of the row's logits; a lower one makes cand the best image; a negative
 *            best margin marks the entry done (square_accept_row)
 * Layout:    x0, best, entry by entry [entries, H*W]; cand, logits, keep by row of the list; row-major.
 * Threads:   one block of kRowLanes = 256 threads per row (entry for start), the phases of square_rows.h with a
 *            barrier after each; pixels lane, lane + 256, ... are a thread's (coalesced row copies); the window's
 *            pixels are spread over the lanes the same way, and its "changed a pixel" flags are OR-ed by lane 0 in
 *            shared memory.
 * Precond.:  list holds distinct entries; labels valid classes (checked on the host before upload); 1 <= side <
 *            min(H, W) (checked here).
 * Numerics:  no arithmetic beyond clamp01(x0 + sign eps), which is exact in either order, and a max and a
 *            subtraction of logits: the rows give the host's bits exactly, draws included.
 * Checked by tests/test_cuda_kernels_square.cpp (each kernel against the host lanes on random rows),
 *            tests/test_cuda_attack_runs.cpp (whole runs against the CPU backend's on the robust model) and the row
 *            code by tests/test_square_run.cpp.
 * Registers: start 46, propose 32 (1,028 B of shared memory: the lanes' flags), accept 32; no spills (ptxas, sm_90).
 * Cost per row and iteration (D = 784): propose reads best (and x0 in the window) and writes cand, ~6 KB; accept
 *            copies cand to best on an improvement, ~6 KB. A 4,096-row chunk moves ~50 MB per iteration, ~20 us at
 *            3 TB/s, beside the forward pass's ~0.5 ms at that size.
 */
#include "square.cuh"

#include "block_lanes.cuh"
#include "cuda_check.h"

namespace nudge::cuda {

namespace {

__global__ void __launch_bounds__(kRowLanes) square_start_kernel(SquareState s) {
  const int e = blockIdx.x, D = s.H * s.W;
  const size_t row = static_cast<size_t>(e) * D;
  BlockLanes b;
  square_linf_start_row(b, square_key(s, e), s.eps[e], s.x0 + row, s.best + row, s.H, s.W);
  if (threadIdx.x == 0) s.entry[e] = SquareEntry{};
}

__global__ void __launch_bounds__(kRowLanes) square_propose_kernel(SquareState s, SquareRows r, int it, int side) {
  __shared__ int flags[kRowLanes + 1];
  const int i = blockIdx.x, e = r.list[i], D = s.H * s.W;
  if (s.entry[e].done) return;  // uniform for the block; its candidate would be ignored by the acceptance
  const size_t row = static_cast<size_t>(e) * D;
  BlockLanes b;
  square_linf_propose_row(b, flags, square_key(s, e), s.eps[e], it, side, s.x0 + row, s.best + row,
                          r.cand + static_cast<size_t>(i) * D, s.H, s.W);
}

__global__ void __launch_bounds__(kRowLanes) square_accept_kernel(SquareState s, SquareRows r, int it) {
  const int i = blockIdx.x, e = r.list[i], D = s.H * s.W;
  const float margin = attack_margin(r.logits + static_cast<size_t>(i) * s.K, s.K, s.label[e]);
  BlockLanes b;
  square_accept_row(b, s.entry + e, margin, it, r.cand ? r.cand + static_cast<size_t>(i) * D : nullptr,
                    s.best + static_cast<size_t>(e) * D, D, r.keep + i);
}

void check_state(const SquareState& s, const char* op) {
  if (s.entries < 0 || s.H < 2 || s.W < 2 || s.K < 2) throw_shape_error(op, "needs entries >= 0, H, W >= 2, K >= 2");
  if (!s.x0 || !s.label || !s.eps || !s.point || !s.best || !s.entry) throw_shape_error(op, "a state array is missing");
}

void check_rows(const SquareRows& r, const char* op) {
  if (r.count < 0 || !r.list) throw_shape_error(op, "needs count >= 0 and a list");
}

}  // namespace

void square_start_cuda(const SquareState& s, cudaStream_t stream) {
  check_state(s, "square_start_cuda");
  if (s.entries == 0) return;
  square_start_kernel<<<s.entries, kRowLanes, 0, stream>>>(s);
  check_launch("square_start_cuda", stream);
}

void square_propose_cuda(const SquareState& s, const SquareRows& r, int it, int side, cudaStream_t stream) {
  check_state(s, "square_propose_cuda");
  check_rows(r, "square_propose_cuda");
  if (!r.cand) throw_shape_error("square_propose_cuda", "needs candidates");
  if (it < 1 || side < 1 || side >= s.H || side >= s.W)
    throw_shape_error("square_propose_cuda", "needs it >= 1 and a window side in [1, min(H, W))");
  if (r.count == 0) return;
  square_propose_kernel<<<r.count, kRowLanes, 0, stream>>>(s, r, it, side);
  check_launch("square_propose_cuda", stream);
}

void square_accept_cuda(const SquareState& s, const SquareRows& r, int it, cudaStream_t stream) {
  check_state(s, "square_accept_cuda");
  check_rows(r, "square_accept_cuda");
  if (!r.logits || !r.keep || (it > 0 && !r.cand)) throw_shape_error("square_accept_cuda", "logits, keep, cand");
  if (r.count == 0) return;
  square_accept_kernel<<<r.count, kRowLanes, 0, stream>>>(s, r, it);
  check_launch("square_accept_cuda", stream);
}

}  // namespace nudge::cuda
