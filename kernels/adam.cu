/* Adam on a flat parameter vector (all layers' weights and biases, Architecture::params() order):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  w -= lr (m / c1) / (sqrt(v / c2) + eps)
 * with c1 = 1 - b1^t and c2 = 1 - b2^t passed in (computed once per step on the host with std::pow, exactly as the
 * CPU backend).
 * Layout:    four float32 vectors of n elements.
 * Threads:   one thread per parameter, grid-stride.
 * Precond.:  none beyond n elements in each buffer; the buffers do not alias.
 * Checked by tests/test_cuda_kernels_layers.cpp: CudaKernels.AdamUpdate, and tests/test_cuda_parity_training.cpp:
 *            CudaBackendParity.TrainSteps end to end.
 *
 * Cost: ~12 flops + sqrt + 2 divisions per parameter; 28 bytes moved (read w, g, m, v; write w, m, v). The reference
 * model has 54k parameters: 1.5 MB, a few microseconds, i.e. launch bound.
 */
#include "adam.cuh"

#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

__global__ void adam_update_kernel(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                                   float* __restrict__ v, size_t n, AdamStep s) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = s.beta1 * m[i] + (1 - s.beta1) * gi;
    const float vi = s.beta2 * v[i] + (1 - s.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] -= s.lr * (mi / s.c1) / (sqrtf(vi / s.c2) + s.eps);
  }
}

}  // namespace

void adam_update_cuda(float* w, const float* g, float* m, float* v, size_t n, const AdamStep& step,
                      cudaStream_t stream) {
  if (!(step.c1 > 0.0f) || !(step.c2 > 0.0f)) throw_shape_error("adam_update_cuda", "bias corrections must be > 0");
  if (n == 0) return;
  adam_update_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, stream>>>(w, g, m, v, n, step);
  check_launch("adam_update_cuda", stream);
}

}  // namespace nudge::cuda
