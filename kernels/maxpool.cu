/* Max-pooling, p x p windows with stride p (windows never overlap), floor on odd sizes.
 *
 * Forward:   y[n,c,oh,ow] = max over the window; argmax = h*W + w of the first maximum in row-major order (a later
 *            element wins only if strictly greater, exactly as the CPU twin).
 * Backward:  dx[n,c,h,w] = dy[n,c,h/p,w/p] if (h,w) is that window's argmax, else 0. Because the windows are
 *            disjoint every input element has at most one window, so this is a gather: one thread per input element
 *            writes its value, with no zeroing pass and no atomics, and the result is bit-identical to the CPU's
 *            scatter-add into zeros.
 * Layout:    NCHW float32, argmax int32 [N,C,Ho,Wo].
 * Threads:   forward one thread per output element, backward one per input element; grid-stride, size_t indices.
 * Precond.:  p >= 1, H >= p, W >= p.
 * Checked by tests/test_cuda_kernels_layers.cpp: CudaKernels.MaxPool* (random data, odd sizes, deliberate ties).
 *
 * Cost: forward p*p compares per output, reads 4*N*C*H*W bytes, writes 8 per output (value + index): for p = 2,
 * 1.5x the input's bytes in total. Backward reads 8 per output and writes 4 per input. Both are bandwidth bound
 * (~0.1 ms for the reference model's pool1 at 10k images on an H100).
 */
#include "maxpool.cuh"

#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

__global__ void maxpool_forward_kernel(const float* __restrict__ x, int H, int W, int p, int Ho, int Wo,
                                       size_t total, float* __restrict__ y, int32_t* __restrict__ argmax) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int ow = static_cast<int>(i % Wo);
    const int oh = static_cast<int>((i / Wo) % Ho);
    const size_t plane = i / (static_cast<size_t>(Ho) * Wo);
    const float* xp = x + plane * H * W;
    int best = oh * p * W + ow * p;
    float best_v = xp[best];
    for (int a = 0; a < p; ++a)
      for (int b = 0; b < p; ++b) {
        const int idx = (oh * p + a) * W + ow * p + b;
        const float v = xp[idx];
        if (v > best_v) {
          best = idx;
          best_v = v;
        }
      }
    y[i] = best_v;
    argmax[i] = best;
  }
}

__global__ void maxpool_backward_kernel(const float* __restrict__ dy, const int32_t* __restrict__ argmax, int H,
                                        int W, int p, int Ho, int Wo, size_t total, float* __restrict__ dx) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int w = static_cast<int>(i % W);
    const int h = static_cast<int>((i / W) % H);
    const size_t plane = i / (static_cast<size_t>(H) * W);
    const int oh = h / p, ow = w / p;
    float v = 0.0f;
    if (oh < Ho && ow < Wo) {
      const size_t o = plane * Ho * Wo + static_cast<size_t>(oh) * Wo + ow;
      if (argmax[o] == h * W + w) v = dy[o];
    }
    dx[i] = v;
  }
}

void check_shape(const char* op, int N, int C, int H, int W, int p) {
  if (N < 0 || C <= 0 || p <= 0 || H < p || W < p)
    throw_shape_error(op, "needs N >= 0, C > 0, p > 0 and an input of at least p x p (got N=" + std::to_string(N) +
                              " C=" + std::to_string(C) + " H=" + std::to_string(H) + " W=" + std::to_string(W) +
                              " p=" + std::to_string(p) + ")");
}

}  // namespace

void maxpool_forward_cuda(const float* x, int N, int C, int H, int W, int p, float* y, int32_t* argmax,
                          cudaStream_t stream) {
  check_shape("maxpool_forward_cuda", N, C, H, W, p);
  const int Ho = H / p, Wo = W / p;
  const size_t total = static_cast<size_t>(N) * C * Ho * Wo;
  if (total == 0) return;
  maxpool_forward_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(x, H, W, p, Ho, Wo, total, y,
                                                                                        argmax);
  check_launch("maxpool_forward_cuda", stream);
}

void maxpool_backward_cuda(const float* dy, const int32_t* argmax, int N, int C, int H, int W, int p, float* dx,
                           cudaStream_t stream) {
  check_shape("maxpool_backward_cuda", N, C, H, W, p);
  const int Ho = H / p, Wo = W / p;
  const size_t total = static_cast<size_t>(N) * C * H * W;
  if (total == 0) return;
  maxpool_backward_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(dy, argmax, H, W, p, Ho, Wo,
                                                                                         total, dx);
  check_launch("maxpool_backward_cuda", stream);
}

}  // namespace nudge::cuda
