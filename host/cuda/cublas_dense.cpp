// cuBLAS is column-major. A row-major matrix A [r, c] is, read column-major with leading dimension c, the matrix A^T
// [c, r]. So each row-major product is computed as its transpose: Y = X W^T  <=>  Y^T = W X^T, and so on below.
// cublasSgemm(h, opA, opB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc) computes C [m, n] = opA(A) [m, k] *
// opB(B) [k, n], all column-major.
#include "cublas_dense.h"

#include <cublas_v2.h>

#include "cuda_check.h"
#include "cuda_context.h"

namespace nudge::cuda {

void dense_forward_gemm(CudaContext& ctx, const float* x, int N, int in, const float* w, int out, float* y) {
  if (N == 0) return;
  const float one = 1.0f, zero = 0.0f;
  // Y^T [out, N] = W [out, in] * X^T [in, N]. Column-major, w (ld in) is W^T, so opA = T; x (ld in) is X^T.
  CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, &one, w, in, x, in, &zero, y, out));
  ctx.after_op("cuBLAS dense forward");
}

void dense_backward_data_gemm(CudaContext& ctx, const float* dy, int N, int in, const float* w, int out, float* dx) {
  if (N == 0) return;
  const float one = 1.0f, zero = 0.0f;
  // dX^T [in, N] = W^T [in, out] * dY^T [out, N]. w (ld in) is W^T as is; dy (ld out) is dY^T.
  CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, in, N, out, &one, w, in, dy, out, &zero, dx, in));
  ctx.after_op("cuBLAS dense backward data");
}

void dense_backward_weight_gemm(CudaContext& ctx, const float* x, const float* dy, int N, int in, int out, float* dw) {
  const float one = 1.0f, zero = 0.0f;
  // dW^T [in, out] = X^T [in, N] * dY [N, out]. x (ld in) is X^T as is; dy (ld out) is dY^T, so opB = T.
  // With N = 0, k = 0 and beta = 0 give zeros, as the sum over an empty batch should be.
  CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, in, out, N, &one, x, in, dy, out, &zero, dw, in));
  ctx.after_op("cuBLAS dense backward weight");
}

}  // namespace nudge::cuda
