/* Bias gradient: db[c] = sum over n < N and p < P of dy[n,c,p].
 *
 * Layout:    dy NCHW float32 [N,C,P] (P = H*W; P = 1 for a dense layer's [N,C]); db [C].
 * Threads:   one block of 256 threads per channel c; the block strides over the N*P terms of its channel (reading
 *            rows of P contiguous floats, coalesced when P >= 32), sums in double, and reduces with warp shuffles.
 *            Double accumulation makes the GPU's rounding error negligible next to the CPU twin's float sums, and the
 *            fixed reduction order makes it deterministic (no atomics).
 * Precond.:  N >= 0, C, P > 0.
 * Checked by tests/test_cuda_kernels_layers.cpp: CudaKernels.BiasGrad (and the network parameter-gradient tests).
 *
 * Cost: N*C*P adds, 4*N*C*P bytes read. Only training calls it, on batches of 32..1024: conv1 of the reference model
 * at batch 32 reads 2 MB, a few microseconds; the launch dominates.
 */
#include "bias_grad.cuh"

#include "cuda_check.h"

namespace nudge::cuda {

namespace {

constexpr int kThreads = 256;

__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // valid in thread 0
}

__global__ void __launch_bounds__(kThreads) bias_grad_kernel(const float* __restrict__ dy, int N, int C, int P,
                                                             float* __restrict__ db) {
  const int c = blockIdx.x;
  const size_t terms = static_cast<size_t>(N) * P;
  double s = 0;
  for (size_t j = threadIdx.x; j < terms; j += kThreads) {
    const size_t n = j / P, p = j % P;
    s += dy[(n * C + c) * P + p];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) db[c] = static_cast<float>(s);
}

}  // namespace

void bias_grad_cuda(const float* dy, int N, int C, int P, float* db, cudaStream_t stream) {
  if (N < 0 || C <= 0 || P <= 0) throw_shape_error("bias_grad_cuda", "N must be >= 0 and C, P positive");
  bias_grad_kernel<<<C, kThreads, 0, stream>>>(dy, N, C, P, db);
  check_launch("bias_grad_cuda", stream);
}

}  // namespace nudge::cuda
