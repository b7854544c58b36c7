// Max-pooling with p x p windows, stride p, floor (odd edges dropped). CPU twins: cpu::maxpool_forward and
// cpu::maxpool_backward.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

// x [N,C,H,W] -> y [N,C,H/p,W/p]; argmax [N,C,H/p,W/p] holds the index h*W+w of the maximum within its input plane,
// the first in row-major order on ties.
void maxpool_forward_cuda(const float* x, int N, int C, int H, int W, int p, float* y, int32_t* argmax,
                          cudaStream_t stream);
// dx [N,C,H,W] overwritten: dy at each window's argmax, 0 elsewhere (also in the dropped edge rows/columns).
void maxpool_backward_cuda(const float* dy, const int32_t* argmax, int N, int C, int H, int W, int p, float* dx,
                           cudaStream_t stream);

}  // namespace nudge::cuda
