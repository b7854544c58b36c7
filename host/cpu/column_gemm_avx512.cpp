// column_gemm for AVX-512F, built with -mavx512f (host/cpu/CMakeLists.txt) and called only where the CPU and OS
// support it. Only intrinsics here: see column_gemm_tiles.h.
#include <immintrin.h>

// GCC 12's _mm512_max_ps passes _mm512_undefined_ps() as the unused merge source, which -Wmaybe-uninitialized
// reports at every use; the value is never read (the mask is all ones).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "column_gemm_isa.h"
#include "column_gemm_tiles.h"

namespace nudge::cpu::gemm_detail {

namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int W = 16;
  static __mmask16 first(int count) { return static_cast<__mmask16>((1u << count) - 1u); }
  static V zero() { return _mm512_setzero_ps(); }
  static V bcast(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  // Masked lanes are neither read nor able to fault, so a row's last columns may end where the buffer does.
  static V load_first(const float* p, int count) { return _mm512_maskz_loadu_ps(first(count), p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V relu(V x) { return _mm512_max_ps(x, _mm512_setzero_ps()); }  // max returns its second operand for NaN and +-0
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static void store_first(float* p, V x, int count) { _mm512_mask_storeu_ps(p, first(count), x); }
  static void store_lanes(float* p, V x, int lane0, int len) {
    const V packed = _mm512_maskz_compress_ps(static_cast<__mmask16>(first(len) << lane0), x);
    _mm512_mask_storeu_ps(p, first(len), packed);
  }
};

}  // namespace

void column_gemm_avx512(const ColumnGemm& g) { column_gemm_with<Avx512>(g); }

}  // namespace nudge::cpu::gemm_detail
