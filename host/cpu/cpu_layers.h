// CPU layer kernels, batch-first NCHW float32. These are the CPU backend's compute and the reference that the CUDA
// kernels are checked against. Convolutions and dense layers run on column_gemm (column_gemm.h), so every image's
// outputs are the same bits whatever else shares the call; the filter gradients, sums over the batch, are OpenBLAS.
// All outputs are overwritten (never accumulated into).
#pragma once
#include <cstdint>
#include <cstddef>

#include "architecture.h"

namespace nudge::cpu {

// Convolution with `win` = (k, stride, pad): x [N,in], w [K,in.c,k,k], b [K], y [N,K,Ho,Wo] with
// Ho = win.out(in.h), Wo = win.out(in.w); zeros in the padding. relu: y = max(conv + b, 0) in the same pass.
void conv2d_forward(const float* x, int N, Shape3 in, const float* w, const float* b, int K, Window win, float* y,
                    bool relu = false);
// One image's outputs (oh, ow) in [oh0, oh1) x [ow0, ow1) of a valid stride-1 convolution with k x k filters, the same
// bits conv2d_forward gives them; y [K, Ho, Wo] is written only there.
void conv2d_forward_rect(const float* x, Shape3 in, const float* w, const float* b, int K, int k, float* y, int oh0,
                         int oh1, int ow0, int ow1, bool relu);
// dx [N,in] from dy.
void conv2d_backward_data(const float* dy, int N, Shape3 in, const float* w, int K, Window win, float* dx);
// dw [K,in.c,k,k] and db [K], summed over the batch.
void conv2d_backward_filter(const float* x, const float* dy, int N, Shape3 in, int K, Window win, float* dw, float* db);
// The valid, stride-1 convolution of the reference architecture.
inline void conv2d_forward(const float* x, int N, Shape3 in, const float* w, const float* b, int K, int k, float* y) {
  conv2d_forward(x, N, in, w, b, K, Window{k, 1, 0}, y);
}
inline void conv2d_backward_data(const float* dy, int N, Shape3 in, const float* w, int K, int k, float* dx) {
  conv2d_backward_data(dy, N, in, w, K, Window{k, 1, 0}, dx);
}
inline void conv2d_backward_filter(const float* x, const float* dy, int N, Shape3 in, int K, int k, float* dw, float* db) {
  conv2d_backward_filter(x, dy, N, in, K, Window{k, 1, 0}, dw, db);
}

void relu_forward(const float* x, size_t n, float* y);
// dx = dy where y > 0 else 0 (y is the forward output).
void relu_backward(const float* y, const float* dy, size_t n, float* dx);

// Max-pooling over `win` windows, padding never chosen (host/core/pool_math.h). argmax [N, out] holds the index
// within the input plane (h*W+w) of the maximum; ties go to the first in row-major order.
void maxpool_forward(const float* x, int N, Shape3 in, Window win, float* y, int32_t* argmax);
// dx [N,in] overwritten: each input gets the sum of dy over the windows whose argmax it is.
void maxpool_backward(const float* dy, const int32_t* argmax, int N, Shape3 in, Window win, float* dx);
// maxpool_backward then relu_backward, for a pool right after a ReLU (relu_out: the ReLU's output, the pool's input),
// in one pass, with the same bits. Disjoint windows only (win.stride >= win.k).
void maxpool_relu_backward(const float* dy, const int32_t* argmax, const float* relu_out, int N, Shape3 in, Window win,
                           float* dx);
// p x p windows, stride p: the reference architecture's pool.
inline void maxpool_forward(const float* x, int N, Shape3 in, int p, float* y, int32_t* argmax) {
  maxpool_forward(x, N, in, Window{p, p, 0}, y, argmax);
}
inline void maxpool_backward(const float* dy, const int32_t* argmax, int N, Shape3 in, int p, float* dx) {
  maxpool_backward(dy, argmax, N, in, Window{p, p, 0}, dx);
}

// Average over `win` windows (win.pad must be 0): y [N,in.c,Ho,Wo]; dx [N,in] overwritten.
void avgpool_forward(const float* x, int N, Shape3 in, Window win, float* y);
void avgpool_backward(const float* dy, int N, Shape3 in, Window win, float* dx);

// y [N,out] = x [N,in] * w^T + b, w [out,in]; relu as for conv2d_forward.
void dense_forward(const float* x, int N, int in, const float* w, const float* b, int out, float* y, bool relu = false);
// The same with the weights already transposed, wt [in,out] (dense_forward transposes w on every call).
void dense_forward_wt(const float* x, int N, int in, const float* wt, const float* b, int out, float* y, bool relu);
void dense_backward_data(const float* dy, int N, int in, const float* w, int out, float* dx);
void dense_backward_params(const float* x, const float* dy, int N, int in, int out, float* dw, float* db);

}  // namespace nudge::cpu
