/* Row argmax: out[entry[r]] = the first k with probs[r, k] maximal.
 *
 * Layout:    probs row-major float32 [rows, K]; out indexed by entry (or by row when entry is null).
 * Threads:   one thread per row, grid-stride; K is small (10), so a row's loop is short and rows are independent.
 * Precond.:  rows >= 0, K >= 1; entry[r] distinct and within out.
 * Checked by tests/test_cuda_kernels_optimize.cpp: CudaKernels.RowArgmax; and through the layer-by-layer chunk's
 *            start classes by tests/test_cuda_parity_optimize.cpp (CudaOptimizeParity.*StartClass*).
 *
 * Cost: K loads and compares per row, 4K + 8 bytes per row: 100k rows, 4 MB, a few microseconds; once per chunk.
 */
#include "row_argmax.cuh"

#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

__global__ void row_argmax_kernel(const float* __restrict__ probs, int rows, int K, const int32_t* __restrict__ entry,
                                  int32_t* __restrict__ out) {
  for (size_t r = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; r < static_cast<size_t>(rows);
       r += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float* p = probs + r * K;
    int best = 0;
    for (int k = 1; k < K; ++k)
      if (p[k] > p[best]) best = k;
    out[entry ? entry[r] : static_cast<int32_t>(r)] = best;
  }
}

}  // namespace

void row_argmax_cuda(const float* probs, int rows, int K, const int32_t* entry, int32_t* out, cudaStream_t stream) {
  if (rows < 0 || K < 1) throw_shape_error("row_argmax_cuda", "needs rows >= 0 and K >= 1");
  if (rows == 0) return;
  row_argmax_kernel<<<elementwise_blocks(rows), kElementwiseThreads, 0, stream>>>(probs, rows, K, entry, out);
  check_launch("row_argmax_cuda", stream);
}

}  // namespace nudge::cuda
