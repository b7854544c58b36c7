// The per-instruction-set entry points of column_gemm (column_gemm.h); column_gemm.cpp picks one at run time.
#pragma once
#include "column_gemm.h"

namespace nudge::cpu::gemm_detail {

void column_gemm_scalar(const ColumnGemm& g);
#if NUDGE_X86_KERNELS
void column_gemm_avx2(const ColumnGemm& g);    // needs AVX2 and FMA
void column_gemm_avx512(const ColumnGemm& g);  // needs AVX-512F
#endif

}  // namespace nudge::cpu::gemm_detail
