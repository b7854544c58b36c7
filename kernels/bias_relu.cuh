// Bias and ReLU on NCHW activations (dense layers use P = 1). CPU twins: the bias part of cpu::conv2d_forward /
// cpu::dense_forward, cpu::relu_forward and cpu::relu_backward.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace nudge::cuda {

// y[n,c,p] += b[c] in place. y [N,C,P].
void bias_add_cuda(float* y, const float* b, int N, int C, int P, cudaStream_t stream);
// y[n,c,p] = relu(x[n,c,p] + b[c]); b may be null (plain ReLU); y may equal x (in place).
void bias_relu_cuda(const float* x, const float* b, float* y, int N, int C, int P, cudaStream_t stream);
// dx = y > 0 ? dy : 0, y the ReLU's output. dx may equal dy.
void relu_backward_cuda(const float* y, const float* dy, float* dx, size_t n, cudaStream_t stream);

}  // namespace nudge::cuda
