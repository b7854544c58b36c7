// Max-pooling over Window (k, stride, pad) windows, padding never chosen, floor on the output size (Window::out).
// CPU twins: cpu::maxpool_forward and cpu::maxpool_backward (host/cpu/cpu_layers.h); both run host/core/pool_math.h.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "window.h"

namespace nudge::cuda {

// x [N,C,H,W] -> y [N,C,Ho,Wo] with Ho = win.out(H), Wo = win.out(W); argmax [N,C,Ho,Wo] holds the index h*W+w of
// the maximum within its input plane, the first in row-major order on ties. Needs 2 win.pad <= win.k.
void maxpool_forward_cuda(const float* x, int N, int C, int H, int W, Window win, float* y, int32_t* argmax,
                          cudaStream_t stream);
// dx [N,C,H,W] overwritten: each input element gets the sum of dy over the windows whose argmax it is, 0 if none
// (also in rows/columns no window reaches).
void maxpool_backward_cuda(const float* dy, const int32_t* argmax, int N, int C, int H, int W, Window win, float* dx,
                           cudaStream_t stream);

}  // namespace nudge::cuda
