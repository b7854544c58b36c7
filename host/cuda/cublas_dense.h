// Dense (fully connected) layers through cuBLAS SGEMM, in PyTorch's row-major layout: x [N, in], w [out, in],
// y [N, out]. Bias and activation are separate kernels (kernels/bias_relu.cuh, kernels/bias_grad.cuh).
// Outputs are overwritten. Math mode is the context's: full FP32 unless NUDGE_ALLOW_TF32=1.
#pragma once

namespace nudge::cuda {

class CudaContext;

// y = x w^T
void dense_forward_gemm(CudaContext& ctx, const float* x, int N, int in, const float* w, int out, float* y);
// dx = dy w
void dense_backward_data_gemm(CudaContext& ctx, const float* dy, int N, int in, const float* w, int out, float* dx);
// dw = dy^T x (summed over the batch)
void dense_backward_weight_gemm(CudaContext& ctx, const float* x, const float* dy, int N, int in, int out, float* dw);

}  // namespace nudge::cuda
