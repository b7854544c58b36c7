/* FAB-T on the device (the FabDevice of host/cuda/cuda_fab.cpp): the start, the boundary and the update of a FAB-T
 * run, so that an iteration is queued with no host round trip.
 *   start:    x = x0, adv = 0, entries reset
 *   boundary: g = z_y - z_t, its logit gradient e_y - e_t and the argmax (fab_boundary_one)
 *   update:   a misclassified iterate within eps breaks its entry, one farther away is pulled toward x0; any other
 *             steps onto the linearised boundary from x and from x0 and takes their biased combination
 *             (fab_update_row, with fab_project_row's sort by sort_pairs of block_lanes.cuh)
 * Layout:    state by entry [entries, D]; logits, dlogits, g, pred, grad, keep by row of the list; row-major.
 *            Shared memory of the update (dynamic, fab_scratch): key[c] and partial[kFabPartials] doubles, then
 *            idx[c] ints and d_i[D], d_0[D] floats (c = fab_sort_capacity(D)), so every array is aligned to its type;
 *            24,736 B at D = 784 (c = 1,024), 79,904 B at D = 3,072, at most 227 KiB (D <= 8,192) on sm_90.
 * Threads:   start: grid-stride over the pixels (and the entries). boundary: one thread per row (K is ~10),
 *            grid-stride. update: one block of kRowLanes = 256 threads per row, the phases of fab_rows.h with a
 *            barrier after each; pixels lane, lane + 256, ... are a thread's, so the row's loads are coalesced.
 * Precond.:  list holds distinct entries; labels and targets valid classes with target != label (checked on the
 *            host before upload); grad present when the step needs it.
 * Numerics:  double sums of lane partials added in lane order by lane 0, as the host lanes add them; the sort gives
 *            std::sort's permutation (a total order); square roots and divisions correctly rounded on both; built
 *            with --fmad=false (kernels/CMakeLists.txt) as the host rows are with -ffp-contract=off, so no product is
 *            fused into an FMA on either side. The rows give the host's bits.
 * Checked by tests/test_cuda_kernels_fab.cpp (each kernel and the sort against the host lanes on random rows, bit
 *            for bit), tests/test_cuda_attack_runs.cpp (whole runs against the CPU backend's) and the row code by
 *            tests/test_fab_run.cpp.
 * Registers: (ptxas, sm_90) start 14, boundary 32, update 48, sort 40; no spills, no stack frame (the sort's
 *            constant stride matters here, block_lanes.cuh). 48 registers x 256 threads hold 5 update blocks per SM
 *            (1,280 threads; at D = 784 their shared memory would allow 9, at D = 3,072 it allows 2).
 * Cost per row and iteration (D = 784): two projections, each a 55-stage sort of 1,024 pairs in shared memory
 *            (110 compare-exchanges per thread), four passes over the row and three or four serial scans of the 256
 *            lane partials by lane 0 (~1 us each), so ~15-20 us of latency per row, overlapped across an SM's 5
 *            blocks. The fewest bytes: x, x0, w read and x written, 16 B/pixel, ~13 KB. A 2,048-row chunk is ~3
 *            waves of 132 SMs x 5 blocks, ~60 us per iteration (an estimate until a card measures it), beside the
 *            network's ~1 ms forward and backward at that size: latency-bound, not bandwidth-bound, and small
 *            either way.
 */
#include "fab.cuh"

#include "block_lanes.cuh"
#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

// The default dynamic shared memory a block may have without opting in.
constexpr size_t kDefaultSharedBytes = 48 * 1024;

// Where a row's FabScratch lies in the block's dynamic shared memory (see the header's Layout).
struct FabScratchLayout {
  int cap, D;
  __host__ __device__ size_t doubles() const { return static_cast<size_t>(cap) + kFabPartials; }
  __host__ __device__ size_t bytes() const {
    return doubles() * sizeof(double) + static_cast<size_t>(cap) * sizeof(int32_t) +
           2 * static_cast<size_t>(D) * sizeof(float);
  }
  __device__ FabScratch view(double* base) const {
    FabScratch s;
    s.key = base;
    s.partial = base + cap;
    s.idx = reinterpret_cast<int32_t*>(base + doubles());
    s.d_i = reinterpret_cast<float*>(s.idx + cap);
    s.d_0 = s.d_i + D;
    return s;
  }
};

__host__ __device__ FabScratchLayout fab_scratch(int D) { return FabScratchLayout{fab_sort_capacity(D), D}; }

__global__ void fab_start_kernel(FabState s) {
  const size_t n = static_cast<size_t>(s.entries) * s.D;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    s.x[i] = s.x0[i];
    // finish() downloads every row: an entry never broken has zeros, not a pool block's old contents.
    s.adv[i] = 0.0f;
  }
  for (size_t e = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < static_cast<size_t>(s.entries);
       e += stride)
    s.entry[e] = FabEntry{};
}

// Grid-stride: elementwise_blocks caps the grid, so a list longer than the cap's threads is still covered.
__global__ void fab_boundary_kernel(FabState s, FabRows r) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < r.count; i += gridDim.x * blockDim.x) {
    const int e = r.list[i];
    int pred = 0;
    r.g[i] = fab_boundary_one(r.logits + static_cast<size_t>(i) * s.K, s.K, s.label[e], s.target[e],
                              r.dlogits + static_cast<size_t>(i) * s.K, &pred);
    r.pred[i] = pred;
  }
}

__global__ void __launch_bounds__(kRowLanes) fab_update_kernel(FabState s, FabRows r, FabStep st) {
  extern __shared__ double scratch[];
  const int i = blockIdx.x, e = r.list[i];
  const size_t row = static_cast<size_t>(e) * s.D;
  const FabUpdateRow u{s.entry + e,
                       s.x + row,
                       s.x0 + row,
                       st.need_grad ? r.grad + static_cast<size_t>(i) * s.D : nullptr,
                       r.g[i],
                       r.pred[i] != s.label[e],
                       s.eps[e],
                       s.adv + row,
                       r.keep + i};
  BlockLanes b;
  fab_update_row(b, fab_scratch(s.D).view(scratch), u, st, s.D);
}

// One block per row; the pairs stay in global memory (the update sorts in shared memory, through the same code).
__global__ void __launch_bounds__(kRowLanes) fab_sort_pairs_kernel(double* key, int32_t* idx, int n, int cap) {
  const size_t row = static_cast<size_t>(blockIdx.x) * cap;
  BlockLanes b;
  sort_pairs(b, key + row, idx + row, n, cap);
}

void check_state(const FabState& s, const char* op) {
  if (s.entries < 0 || s.D <= 0 || s.K < 2) throw_shape_error(op, "needs entries >= 0, D > 0 and K >= 2");
  if (!s.x0 || !s.label || !s.target || !s.eps || !s.x || !s.adv || !s.entry)
    throw_shape_error(op, "a state array is missing");
}

void check_rows(const FabRows& r, const char* op) {
  if (r.count < 0 || !r.list) throw_shape_error(op, "needs count >= 0 and a list");
}

}  // namespace

size_t fab_update_shared_bytes(int D) { return fab_scratch(D).bytes(); }

void fab_update_prepare(int D) {
  const size_t bytes = fab_update_shared_bytes(D);
  // A per-function attribute of the current device, not state of ours. Beyond the device's opt-in maximum it fails
  // here (host/cuda/cuda_fab.cpp refuses such images before a run starts).
  if (bytes > kDefaultSharedBytes)
    CUDA_CHECK(cudaFuncSetAttribute(fab_update_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
}

void fab_start_cuda(const FabState& s, cudaStream_t stream) {
  check_state(s, "fab_start_cuda");
  if (s.entries == 0) return;
  fab_start_kernel<<<elementwise_blocks(static_cast<size_t>(s.entries) * s.D), kElementwiseThreads, 0, stream>>>(s);
  check_launch("fab_start_cuda", stream);
}

void fab_boundary_cuda(const FabState& s, const FabRows& r, cudaStream_t stream) {
  check_state(s, "fab_boundary_cuda");
  check_rows(r, "fab_boundary_cuda");
  if (!r.logits || !r.dlogits || !r.g || !r.pred) throw_shape_error("fab_boundary_cuda", "logits, dlogits, g, pred");
  if (r.count == 0) return;
  fab_boundary_kernel<<<elementwise_blocks(r.count), kElementwiseThreads, 0, stream>>>(s, r);
  check_launch("fab_boundary_cuda", stream);
}

void fab_update_cuda(const FabState& s, const FabRows& r, const FabStep& st, cudaStream_t stream) {
  check_state(s, "fab_update_cuda");
  check_rows(r, "fab_update_cuda");
  if (!r.g || !r.pred || !r.keep) throw_shape_error("fab_update_cuda", "g, pred, keep");
  if (st.need_grad && !r.grad) throw_shape_error("fab_update_cuda", "a step needs the rows' input gradients");
  if (r.count == 0) return;
  fab_update_kernel<<<r.count, kRowLanes, fab_update_shared_bytes(s.D), stream>>>(s, r, st);
  check_launch("fab_update_cuda", stream);
}

void fab_sort_pairs_cuda(double* key, int32_t* idx, int rows, int n, cudaStream_t stream) {
  if (rows < 0 || n < 0 || (rows > 0 && (!key || !idx)))
    throw_shape_error("fab_sort_pairs_cuda", "needs rows >= 0, n >= 0 and the pair arrays");
  if (rows == 0) return;
  fab_sort_pairs_kernel<<<rows, kRowLanes, 0, stream>>>(key, idx, n, fab_sort_capacity(n));
  check_launch("fab_sort_pairs_cuda", stream);
}

}  // namespace nudge::cuda
