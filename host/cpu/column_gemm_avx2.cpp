// column_gemm for AVX2 + FMA, built with -mavx2 -mfma (host/cpu/CMakeLists.txt) and called only where the CPU has
// both. Only intrinsics here: see column_gemm_tiles.h.
#include <immintrin.h>

#include "column_gemm_isa.h"
#include "column_gemm_tiles.h"

namespace nudge::cpu::gemm_detail {

namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int W = 8;
  static __m256i first(int count) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static V zero() { return _mm256_setzero_ps(); }
  static V bcast(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  // vmaskmov reads nothing from the masked lanes, so a row's last columns may end where the buffer does.
  static V load_first(const float* p, int count) { return _mm256_maskload_ps(p, first(count)); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V relu(V x) { return _mm256_max_ps(x, _mm256_setzero_ps()); }  // max returns its second operand for NaN and +-0
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static void store_first(float* p, V x, int count) { _mm256_maskstore_ps(p, first(count), x); }
  static void store_lanes(float* p, V x, int lane0, int len) {
    alignas(32) float t[W];
    _mm256_store_ps(t, x);
    for (int i = 0; i < len; ++i) p[i] = t[lane0 + i];
  }
};

}  // namespace

void column_gemm_avx2(const ColumnGemm& g) { column_gemm_with<Avx2>(g); }

}  // namespace nudge::cpu::gemm_detail
