/* Average pooling over k x k windows moved by `stride`, no padding (every divisor is k*k); output size
 * floor((in - k) / stride) + 1 (Window::out). Windows may overlap (stride < k).
 *
 * Forward:   y[n,c,oh,ow] = (sum of the window in row-major order) / (k*k): avgpool_window_mean
 *            (host/core/pool_math.h), the function the CPU twin runs, so the sum is the same sum.
 * Backward:  dx[n,c,h,w] = sum over the windows covering (h,w), in row-major order of the output, of dy / (k*k)
 *            (avgpool_input_grad, also the CPU twin's function). A gather: one thread per input element, no zeroing
 *            pass, no atomics; inputs no window reaches (the rows/columns the floor drops) get 0.
 *            Only adds and IEEE divisions (nvcc's default -prec-div=true; nothing to contract into an FMA), so both
 *            passes are bit-identical to the CPU twin.
 * Layout:    NCHW float32.
 * Threads:   forward one thread per output element (i -> plane i / (Ho Wo), oh, ow), backward one per input element
 *            (i -> plane i / (H W), h, w); grid-stride, size_t flat indices, int within a plane (at most 2^24 values,
 *            kMaxLayerElements in architecture.h).
 * Precond.:  N >= 0, C > 0, k > 0, stride > 0, pad == 0, H >= k, W >= k.
 * Checked by tests/test_cuda_kernels_layers.cpp: CudaKernels.AvgPool* (k2, k3 s2, odd sizes);
 *            tests/test_cuda_parity_layers.cpp through the whole network.
 *
 * Cost: forward k*k adds + 1 division per output, reads 4*N*C*H*W bytes (each pixel ~(k/stride)^2 times, from cache
 * when windows overlap), writes 4 per output; backward ~(k/stride)^2 divisions and adds per input, reads 4 per
 * output (cached) and writes 4 per input. Bandwidth bound, like max-pooling without the index.
 */
#include "avgpool.cuh"

#include "cuda_check.h"
#include "launch.h"
#include "pool_math.h"

namespace nudge::cuda {

namespace {

__global__ void avgpool_forward_kernel(const float* __restrict__ x, int H, int W, Window win, int Ho, int Wo,
                                       size_t total, float* __restrict__ y) {
  const size_t out_plane = static_cast<size_t>(Ho) * Wo, in_plane = static_cast<size_t>(H) * W;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int ow = static_cast<int>(i % Wo);
    const int oh = static_cast<int>((i / Wo) % Ho);
    y[i] = avgpool_window_mean(x + (i / out_plane) * in_plane, W, win, oh, ow);
  }
}

__global__ void avgpool_backward_kernel(const float* __restrict__ dy, int H, int W, Window win, int Ho, int Wo,
                                        size_t total, float* __restrict__ dx) {
  const size_t out_plane = static_cast<size_t>(Ho) * Wo, in_plane = static_cast<size_t>(H) * W;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int w = static_cast<int>(i % W);
    const int h = static_cast<int>((i / W) % H);
    dx[i] = avgpool_input_grad(dy + (i / in_plane) * out_plane, Ho, Wo, win, h, w);
  }
}

void check_shape(const char* op, int N, int C, int H, int W, Window win) {
  if (N < 0 || C <= 0 || win.k <= 0 || win.stride <= 0 || win.pad != 0 || H < win.k || W < win.k)
    throw_shape_error(op, "needs N >= 0, C > 0, k > 0, stride > 0, no padding and an input of at least k x k (got N=" +
                              std::to_string(N) + " C=" + std::to_string(C) + " H=" + std::to_string(H) +
                              " W=" + std::to_string(W) + " k=" + std::to_string(win.k) +
                              " stride=" + std::to_string(win.stride) + " pad=" + std::to_string(win.pad) + ")");
}

}  // namespace

void avgpool_forward_cuda(const float* x, int N, int C, int H, int W, Window win, float* y, cudaStream_t stream) {
  check_shape("avgpool_forward_cuda", N, C, H, W, win);
  const int Ho = win.out(H), Wo = win.out(W);
  const size_t total = static_cast<size_t>(N) * C * Ho * Wo;
  if (total == 0) return;
  avgpool_forward_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(x, H, W, win, Ho, Wo, total,
                                                                                        y);
  check_launch("avgpool_forward_cuda", stream);
}

void avgpool_backward_cuda(const float* dy, int N, int C, int H, int W, Window win, float* dx, cudaStream_t stream) {
  check_shape("avgpool_backward_cuda", N, C, H, W, win);
  const int Ho = win.out(H), Wo = win.out(W);
  const size_t total = static_cast<size_t>(N) * C * H * W;
  if (total == 0) return;
  avgpool_backward_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(dy, H, W, win, Ho, Wo,
                                                                                         total, dx);
  check_launch("avgpool_backward_cuda", stream);
}

}  // namespace nudge::cuda
