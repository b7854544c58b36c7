// Bias gradient: the sum of the output gradient over batch and positions. CPU twin: the db part of
// cpu::conv2d_backward_filter (P = Ho*Wo) and cpu::dense_backward_params (P = 1).
#pragma once
#include <cuda_runtime_api.h>

namespace nudge::cuda {

// db[c] = sum_{n,p} dy[n,c,p]; dy [N,C,P], db [C] overwritten. N = 0 gives zeros.
void bias_grad_cuda(const float* dy, int N, int C, int P, float* db, cudaStream_t stream);

}  // namespace nudge::cuda
