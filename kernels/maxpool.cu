/* Max-pooling over k x k windows moved by `stride`, with `pad` of padding that is never chosen (PyTorch's and ONNX's
 * -inf padding); output size floor((in + 2 pad - k) / stride) + 1 (Window::out). Windows may overlap (stride < k).
 *
 * Forward:   y[n,c,oh,ow] = max over the window's real pixels; argmax = h*W + w of the first maximum in row-major
 *            order (a later element wins only if strictly greater). The window scan is maxpool_window_argmax
 *            (host/core/pool_math.h), the very function the CPU twin runs, so both pick the same element.
 * Backward:  dx[n,c,h,w] = sum of dy over the windows that cover (h,w) and chose it, visited in row-major order of
 *            the output (maxpool_input_grad, host/core/pool_math.h, also the CPU twin's function for overlapping
 *            windows). A gather: one thread per input element writes its value, no zeroing pass, no atomics. For
 *            stride >= k the CPU scatters into zeros instead; there every input has at most one window, so both sums
 *            are 0 + (at most one dy) and bit-identical.
 * Layout:    NCHW float32, argmax int32 [N,C,Ho,Wo] (an index within its own input plane).
 * Threads:   forward one thread per output element (i -> plane i / (Ho Wo), oh, ow), backward one per input element
 *            (i -> plane i / (H W), h, w); grid-stride, size_t flat indices, int within a plane (a plane holds at
 *            most kMaxLayerElements = 2^24 values, architecture.h).
 * Precond.:  N >= 0, C > 0, k > 0, stride > 0, 0 <= 2 pad <= k (every window holds a real pixel), H + 2 pad >= k,
 *            W + 2 pad >= k.
 * Checked by tests/test_cuda_kernels_layers.cpp: CudaKernels.MaxPool* (random data, odd sizes, deliberate ties,
 *            overlapping and padded windows); tests/test_cuda_parity_layers.cpp through the whole network.
 *
 * Cost: forward k*k compares per output, reads 4*N*C*H*W bytes (each pixel about (k/stride)^2 times, from cache when
 * windows overlap), writes 8 per output (value + index): for k = stride = 2, 1.5x the input's bytes in total.
 * Backward reads ~(k/stride)^2 (index, dy) pairs per input (8 bytes each, cached) and writes 4 per input. Both are
 * bandwidth bound (~0.1 ms for the reference model's pool1 at 10k images on an H100).
 */
#include "maxpool.cuh"

#include "cuda_check.h"
#include "launch.h"
#include "pool_math.h"

namespace nudge::cuda {

namespace {

__global__ void maxpool_forward_kernel(const float* __restrict__ x, int H, int W, Window win, int Ho, int Wo,
                                       size_t total, float* __restrict__ y, int32_t* __restrict__ argmax) {
  const size_t out_plane = static_cast<size_t>(Ho) * Wo, in_plane = static_cast<size_t>(H) * W;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int ow = static_cast<int>(i % Wo);
    const int oh = static_cast<int>((i / Wo) % Ho);
    const float* xp = x + (i / out_plane) * in_plane;
    const int best = maxpool_window_argmax(xp, H, W, win, oh, ow);
    y[i] = xp[best];
    argmax[i] = best;
  }
}

__global__ void maxpool_backward_kernel(const float* __restrict__ dy, const int32_t* __restrict__ argmax, int H,
                                        int W, Window win, int Ho, int Wo, size_t total, float* __restrict__ dx) {
  const size_t out_plane = static_cast<size_t>(Ho) * Wo, in_plane = static_cast<size_t>(H) * W;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int w = static_cast<int>(i % W);
    const int h = static_cast<int>((i / W) % H);
    const size_t o = (i / in_plane) * out_plane;
    dx[i] = maxpool_input_grad(dy + o, argmax + o, W, Ho, Wo, win, h, w);
  }
}

void check_shape(const char* op, int N, int C, int H, int W, Window win) {
  if (N < 0 || C <= 0 || win.k <= 0 || win.stride <= 0 || win.pad < 0 || 2 * win.pad > win.k ||
      H + 2 * win.pad < win.k || W + 2 * win.pad < win.k)
    throw_shape_error(op, "needs N >= 0, C > 0, k > 0, stride > 0, 0 <= 2 pad <= k and an input of at least "
                          "(k - 2 pad) x (k - 2 pad) (got N=" + std::to_string(N) + " C=" + std::to_string(C) +
                              " H=" + std::to_string(H) + " W=" + std::to_string(W) + " k=" + std::to_string(win.k) +
                              " stride=" + std::to_string(win.stride) + " pad=" + std::to_string(win.pad) + ")");
}

}  // namespace

void maxpool_forward_cuda(const float* x, int N, int C, int H, int W, Window win, float* y, int32_t* argmax,
                          cudaStream_t stream) {
  check_shape("maxpool_forward_cuda", N, C, H, W, win);
  const int Ho = win.out(H), Wo = win.out(W);
  const size_t total = static_cast<size_t>(N) * C * Ho * Wo;
  if (total == 0) return;
  maxpool_forward_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(x, H, W, win, Ho, Wo, total,
                                                                                        y, argmax);
  check_launch("maxpool_forward_cuda", stream);
}

void maxpool_backward_cuda(const float* dy, const int32_t* argmax, int N, int C, int H, int W, Window win, float* dx,
                           cudaStream_t stream) {
  check_shape("maxpool_backward_cuda", N, C, H, W, win);
  const int Ho = win.out(H), Wo = win.out(W);
  const size_t total = static_cast<size_t>(N) * C * H * W;
  if (total == 0) return;
  maxpool_backward_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(dy, argmax, H, W, win, Ho,
                                                                                         Wo, total, dx);
  check_launch("maxpool_backward_cuda", stream);
}

}  // namespace nudge::cuda
