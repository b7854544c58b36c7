// Average pooling over Window (k, stride) windows without padding, floor on the output size (Window::out). CPU twins:
// cpu::avgpool_forward and cpu::avgpool_backward (host/cpu/cpu_layers.h); both run host/core/pool_math.h.
#pragma once
#include <cuda_runtime_api.h>

#include "window.h"

namespace nudge::cuda {

// x [N,C,H,W] -> y [N,C,Ho,Wo] with Ho = win.out(H), Wo = win.out(W): each window's mean. win.pad must be 0.
void avgpool_forward_cuda(const float* x, int N, int C, int H, int W, Window win, float* y, cudaStream_t stream);
// dx [N,C,H,W] overwritten: the sum of dy / (k*k) over the windows covering each element, 0 if none.
void avgpool_backward_cuda(const float* dy, int N, int C, int H, int W, Window win, float* dx, cudaStream_t stream);

}  // namespace nudge::cuda
