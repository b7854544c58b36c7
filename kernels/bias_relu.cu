/* Bias add and ReLU, forward and backward.
 *
 * Computes   bias_add:  y[n,c,p] += b[c]
 *            bias_relu: y[n,c,p]  = max(x[n,c,p] + b[c], 0)   (b optional; the conv/dense + relu pair of the
 *                       Architecture fused into one pass over the layer's output, in place)
 *            relu_backward: dx = y > 0 ? dy : 0
 * Layout:    NCHW float32, P = H*W (P = 1 for dense outputs [N, C]).
 * Threads:   one thread per element, grid-stride loop over size_t indices (N*C*P may exceed 2^31).
 * Precond.:  N, C, P >= 0; buffers hold N*C*P floats; x == y allowed.
 * Semantics: ReLU as the CPU twin writes it, x > 0 ? x : 0 (NaN -> 0, -0 -> +0), not fmaxf.
 * Checked by tests/test_cuda_kernels_layers.cpp: CudaKernels.BiasAddAndRelu, CudaKernels.ReluBackward.
 *
 * Cost: 1 FLOP per element (2 with the bias); minimum bytes 8 per element (read + write; the bias stays in L1/L2),
 * 12 for relu_backward (y, dy, dx). Pure bandwidth: on an H100 (~3 TB/s) the reference model's conv1 output for 10k
 * images (162M elements, 1.3 GB moved) takes ~0.45 ms.
 */
#include "bias_relu.cuh"

#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

// x may alias y (the in-place bias + ReLU), so neither carries __restrict__.
template <bool kRelu>
__global__ void bias_relu_kernel(const float* x, const float* __restrict__ b, float* y, int C, int P,
                                 size_t total) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float v = x[i];
    if (b) v += b[(i / P) % C];
    if (kRelu) v = v > 0.0f ? v : 0.0f;
    y[i] = v;
  }
}

__global__ void relu_backward_kernel(const float* __restrict__ y, const float* dy, float* dx, size_t total) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

void check_shape(const char* op, int N, int C, int P) {
  if (N < 0 || C <= 0 || P <= 0) throw_shape_error(op, "N, C and P must be positive");
}

}  // namespace

void bias_add_cuda(float* y, const float* b, int N, int C, int P, cudaStream_t stream) {
  check_shape("bias_add_cuda", N, C, P);
  if (!b) throw_shape_error("bias_add_cuda", "bias is null");
  const size_t total = static_cast<size_t>(N) * C * P;
  if (total == 0) return;
  bias_relu_kernel<false><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(y, b, y, C, P, total);
  check_launch("bias_add_cuda", stream);
}

void bias_relu_cuda(const float* x, const float* b, float* y, int N, int C, int P, cudaStream_t stream) {
  check_shape("bias_relu_cuda", N, C, P);
  const size_t total = static_cast<size_t>(N) * C * P;
  if (total == 0) return;
  bias_relu_kernel<true><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(x, b, y, C, P, total);
  check_launch("bias_relu_cuda", stream);
}

void relu_backward_cuda(const float* y, const float* dy, float* dx, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  relu_backward_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, stream>>>(y, dy, dx, n);
  check_launch("relu_backward_cuda", stream);
}

}  // namespace nudge::cuda
