#include "column_gemm.h"

#include <cmath>
#include <string>

#include "column_gemm_isa.h"
#include "column_gemm_tiles.h"
#include "errors.h"

namespace nudge::cpu {

namespace gemm_detail {

namespace {

// One lane: the reference the vector files must equal bit for bit. std::fma rounds once, as vfmadd does (a library
// call on CPUs without FMA: slow, and exact).
struct Scalar {
  using V = float;
  static constexpr int W = 1;
  static V zero() { return 0.0f; }
  static V bcast(float x) { return x; }
  static V load(const float* p) { return *p; }
  static V load_first(const float* p, int) { return *p; }
  static V fma(V a, V b, V c) { return std::fma(a, b, c); }
  static V add(V a, V b) { return a + b; }
  static V relu(V x) { return x > 0 ? x : 0.0f; }
  static void store(float* p, V x) { *p = x; }
  static void store_first(float* p, V x, int) { *p = x; }
  static void store_lanes(float* p, V x, int, int) { *p = x; }
};

}  // namespace

void column_gemm_scalar(const ColumnGemm& g) { column_gemm_with<Scalar>(g); }

}  // namespace gemm_detail

void column_gemm(const ColumnGemm& g) { column_gemm(g, best_cpu_isa()); }

void column_gemm(const ColumnGemm& g, CpuIsa isa) {
  if (g.M <= 0 || g.N <= 0) return;
  const bool one_segment = g.seg_period >= g.N && g.seg_len >= g.N;
  if (g.seg_period <= 0 || g.seg_len <= 0 || g.seg_len > g.seg_period || (g.col_bias && !one_segment) || g.K < 0)
    throw InternalError("column_gemm: inconsistent column layout");
  switch (isa) {
#if NUDGE_X86_KERNELS
    case CpuIsa::Avx512: gemm_detail::column_gemm_avx512(g); return;
    case CpuIsa::Avx2: gemm_detail::column_gemm_avx2(g); return;
#endif
    default: gemm_detail::column_gemm_scalar(g); return;
  }
}

}  // namespace nudge::cpu
