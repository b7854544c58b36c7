// The CPU network's matrix products: C = A * B where every element of C is one fixed computation, whatever the
// shape of the call. That is what lets the CPU backend put many images into one product and still give each image
// the result it gets alone (chunking, early stop and thread count change which images share a call); BLAS makes no
// such promise (OpenBLAS picks its kernel and blocking by the matrix size), so the attacks used to run one BLAS call
// per image and per layer.
//
// The computation, for every kept element:
//   acc = 0; for k = 0 .. K-1: acc = fma(A(m,k), B(k,n), acc)     (one accumulator, in order, one rounding each)
//   v = acc (+ row_bias[m]) (+ col_bias[j]); if relu: v = v > 0 ? v : 0
// The vector kernels compute exactly this, one column per lane, so every instruction set gives the same bits.
#pragma once
#include <cstddef>

#include "cpu_isa.h"

namespace nudge::cpu {

struct ColumnGemm {
  int M = 0, N = 0, K = 0;
  // A(m,k) = a[m*a_row + k*a_col]: any strides, so a transposed weight matrix needs no copy.
  const float* a = nullptr;
  std::ptrdiff_t a_row = 0, a_col = 0;
  // B(k,n) = b[b_rows[k] + n]: each row contiguous in n, rows anywhere. A convolution's rows are shifted views of its
  // input image (no im2col copy) or the rows of an im2col buffer.
  const float* b = nullptr;
  const std::ptrdiff_t* b_rows = nullptr;
  // Where column n goes: n = s*seg_period + j; columns with j < seg_len are written to c[m*c_row + s*seg_stride + j],
  // the others are computed and dropped (a convolution computed over whole input rows keeps Wo of every W).
  // A plain matrix is one segment: seg_period = seg_len = N.
  float* c = nullptr;
  std::ptrdiff_t c_row = 0;
  int seg_period = 0, seg_len = 0;
  std::ptrdiff_t seg_stride = 0;
  // The same product repeated over `batch` items (images), item i reading b + i*b_batch and writing c + i*c_batch.
  int batch = 1;
  std::ptrdiff_t b_batch = 0, c_batch = 0;
  const float* row_bias = nullptr;  // [M], e.g. a convolution's bias (rows are output channels)
  const float* col_bias = nullptr;  // [seg_len], e.g. a dense layer's bias (columns are outputs)
  bool relu = false;
};

void column_gemm(const ColumnGemm& g);              // with best_cpu_isa()
void column_gemm(const ColumnGemm& g, CpuIsa isa);  // isa must be supported

}  // namespace nudge::cpu
