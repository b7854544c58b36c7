/* L2 Square on the device (the SquareDevice of host/cuda/cuda_square.cpp, with kernels/square.cu's acceptance):
 *   start:   nu = a grid of bumps of drawn sign and orientation, best = clamp01(x0 + eps nu / |nu|)
 *            (square_l2_start_row)
 *   propose: from nu = best - x0, W2's mass and the unused budget move into W1, whose content becomes a drawn-sign
 *            pattern plus its old content, rescaled; cand = clamp01(x0 + eps nu / |nu|) (square_l2_propose_row)
 * Layout:    x0, best, entry by entry [entries, H*W]; cand by row of the list; the pattern table by side
 *            (square_pattern_offset), in both orientations; row-major.
 * Threads:   one block of kRowLanes = 256 threads per row (entry for start), the phases of square_l2_rows.h with a
 *            barrier after each; pixels lane, lane + 256, ... are a thread's. Shared memory (dynamic): the row's nu,
 *            H*W doubles, and kApgdPartials doubles of lane partials (12.4 KB at 28 x 28).
 * Precond.:  list holds distinct entries; side odd in [3, min(H, W)) (checked here); the table covers 1 .. min(H, W)
 *            - 1 (the host builds it so).
 * Numerics:  double sums of lane partials added in lane order by lane 0, as the host lanes add them; products and
 *            sums that could be contracted into FMAs are the rounding intrinsics (nudge_dmul, nudge_dadd), and the
 *            file is compiled with --fmad=false (kernels/CMakeLists.txt) so that ptxas fuses nothing else; square
 *            roots and divisions correctly rounded on both; pixels cast to float once. The rows give the host's bits.
 * Checked by tests/test_cuda_kernels_square.cpp (each kernel against the host lanes on random rows),
 *            tests/test_cuda_attack_runs.cpp (whole runs) and the row code by tests/test_square_run.cpp.
 * Registers: start 48, propose 40; no spills (ptxas, sm_90).
 * Cost per row and iteration (D = 784): three passes over the row (nu, its window update, the placement) with two
 *            reductions of 256 partials by one lane (~2 x 256 dependent double adds, ~1-2 us); reads best, x0 and
 *            writes cand, ~9 KB.
 */
#include "square.cuh"

#include "block_lanes.cuh"
#include "cuda_check.h"
#include "square_l2_rows.h"

namespace nudge::cuda {

namespace {

constexpr size_t kMaxSharedBytes = 48 * 1024;

size_t shared_bytes(int D) { return (static_cast<size_t>(D) + kApgdPartials) * sizeof(double); }

__global__ void __launch_bounds__(kRowLanes) square_l2_start_kernel(SquareState s) {
  extern __shared__ double scratch[];
  const int e = blockIdx.x, D = s.H * s.W;
  const size_t row = static_cast<size_t>(e) * D;
  BlockLanes b;
  square_l2_start_row(b, scratch + D, scratch, square_key(s, e), s.eps[e], s.x0 + row, s.best + row, s.H, s.W,
                      s.patterns);
  if (threadIdx.x == 0) s.entry[e] = SquareEntry{};
}

__global__ void __launch_bounds__(kRowLanes) square_l2_propose_kernel(SquareState s, SquareRows r, int it,
                                                                       int side) {
  extern __shared__ double scratch[];
  const int i = blockIdx.x, e = r.list[i], D = s.H * s.W;
  if (s.entry[e].done) return;  // uniform for the block; its candidate would be ignored by the acceptance
  const size_t row = static_cast<size_t>(e) * D;
  BlockLanes b;
  square_l2_propose_row(b, scratch + D, scratch, square_key(s, e), s.eps[e], it, side, s.x0 + row, s.best + row,
                        r.cand + static_cast<size_t>(i) * D, s.H, s.W, s.patterns);
}

void check_l2_state(const SquareState& s, const char* op) {
  if (s.entries < 0 || s.H < 5 || s.W < 5 || s.K < 2) throw_shape_error(op, "needs entries >= 0, H, W >= 5, K >= 2");
  if (!s.x0 || !s.label || !s.eps || !s.point || !s.best || !s.entry || !s.patterns)
    throw_shape_error(op, "a state array or the pattern table is missing");
  if (!square_l2_fits(s.H, s.W)) throw_shape_error(op, "the image's scratch does not fit a block's shared memory");
}

}  // namespace

bool square_l2_fits(int H, int W) { return shared_bytes(H * W) <= kMaxSharedBytes; }

void square_l2_start_cuda(const SquareState& s, cudaStream_t stream) {
  check_l2_state(s, "square_l2_start_cuda");
  if (s.entries == 0) return;
  square_l2_start_kernel<<<s.entries, kRowLanes, shared_bytes(s.H * s.W), stream>>>(s);
  check_launch("square_l2_start_cuda", stream);
}

void square_l2_propose_cuda(const SquareState& s, const SquareRows& r, int it, int side, cudaStream_t stream) {
  check_l2_state(s, "square_l2_propose_cuda");
  if (r.count < 0 || !r.list || !r.cand) throw_shape_error("square_l2_propose_cuda", "needs a list and candidates");
  if (it < 1 || side < 3 || side % 2 == 0 || side >= s.H || side >= s.W)
    throw_shape_error("square_l2_propose_cuda", "needs it >= 1 and an odd window side in [3, min(H, W))");
  if (r.count == 0) return;
  square_l2_propose_kernel<<<r.count, kRowLanes, shared_bytes(s.H * s.W), stream>>>(s, r, it, side);
  check_launch("square_l2_propose_cuda", stream);
}

}  // namespace nudge::cuda
