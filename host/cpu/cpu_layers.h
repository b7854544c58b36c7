// CPU layer kernels, batch-first NCHW float32. These are the CPU backend's compute and the reference that the CUDA
// kernels are checked against. Convolutions are im2col + OpenBLAS SGEMM; loops over the batch use OpenMP.
// All outputs are overwritten (never accumulated into).
#pragma once
#include <cstdint>
#include <cstddef>

#include "architecture.h"

namespace nudge::cpu {

// Valid convolution, stride 1. x [N,in], w [K,in.c,k,k], b [K], y [N,K,in.h-k+1,in.w-k+1].
void conv2d_forward(const float* x, int N, Shape3 in, const float* w, const float* b, int K, int k, float* y);
// dx [N,in] from dy.
void conv2d_backward_data(const float* dy, int N, Shape3 in, const float* w, int K, int k, float* dx);
// dw [K,in.c,k,k] and db [K], summed over the batch.
void conv2d_backward_filter(const float* x, const float* dy, int N, Shape3 in, int K, int k, float* dw, float* db);

void relu_forward(const float* x, size_t n, float* y);
// dx = dy where y > 0 else 0 (y is the forward output).
void relu_backward(const float* y, const float* dy, size_t n, float* dx);

// p x p windows, stride p, floor. argmax [N, out] holds the index within the input plane (h*W+w) of the maximum;
// ties go to the first in row-major order.
void maxpool_forward(const float* x, int N, Shape3 in, int p, float* y, int32_t* argmax);
void maxpool_backward(const float* dy, const int32_t* argmax, int N, Shape3 in, int p, float* dx);

// y [N,out] = x [N,in] * w^T + b, w [out,in].
void dense_forward(const float* x, int N, int in, const float* w, const float* b, int out, float* y);
void dense_backward_data(const float* dy, int N, int in, const float* w, int out, float* dx);
void dense_backward_params(const float* x, const float* dy, int N, int in, int out, float* dw, float* db);

}  // namespace nudge::cpu
