// layers_isa.h, built with -mavx512f (host/cpu/CMakeLists.txt). Only intrinsics here: see column_gemm_tiles.h.
#include <immintrin.h>

#include "layers_isa.h"

namespace nudge::cpu {

namespace {

__mmask16 first(int count) {
  return static_cast<__mmask16>(count <= 0 ? 0u : count >= 16 ? 0xFFFFu : (1u << count) - 1u);
}

}  // namespace

void maxpool2_plane_avx512(const float* x, int H, int W, float* y, int32_t* argmax) {
  const int Ho = H / 2, Wo = W / 2;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int oh = 0; oh < Ho; ++oh) {
    const float* r0 = x + 2 * oh * W;
    const float* r1 = r0 + W;
    for (int ow0 = 0; ow0 < Wo; ow0 += 16) {
      const int n = Wo - ow0 < 16 ? Wo - ow0 : 16, in_lanes = 2 * n;
      // The 2n inputs of each row as two vectors; masked lanes are not read.
      const __mmask16 lo = first(in_lanes), hi = first(in_lanes - 16);
      const float* p0 = r0 + 2 * ow0;
      const float* p1 = r1 + 2 * ow0;
      const __m512 a0 = _mm512_maskz_loadu_ps(lo, p0), a1 = _mm512_maskz_loadu_ps(hi, p0 + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(lo, p1), b1 = _mm512_maskz_loadu_ps(hi, p1 + 16);
      const __m512 v0 = _mm512_permutex2var_ps(a0, even, a1), v1 = _mm512_permutex2var_ps(a0, odd, a1);
      const __m512 v2 = _mm512_permutex2var_ps(b0, even, b1), v3 = _mm512_permutex2var_ps(b0, odd, b1);
      // Window (oh, ow) starts at 2*oh*W + 2*ow.
      const __m512i i0 = _mm512_add_epi32(_mm512_set1_epi32(2 * oh * W + 2 * ow0), even);
      __m512 m = v0;
      __m512i best = i0;
      __mmask16 gt = _mm512_cmp_ps_mask(v1, m, _CMP_GT_OQ);
      m = _mm512_mask_mov_ps(m, gt, v1);
      best = _mm512_mask_mov_epi32(best, gt, _mm512_add_epi32(i0, _mm512_set1_epi32(1)));
      gt = _mm512_cmp_ps_mask(v2, m, _CMP_GT_OQ);
      m = _mm512_mask_mov_ps(m, gt, v2);
      best = _mm512_mask_mov_epi32(best, gt, _mm512_add_epi32(i0, _mm512_set1_epi32(W)));
      gt = _mm512_cmp_ps_mask(v3, m, _CMP_GT_OQ);
      m = _mm512_mask_mov_ps(m, gt, v3);
      best = _mm512_mask_mov_epi32(best, gt, _mm512_add_epi32(i0, _mm512_set1_epi32(W + 1)));
      const __mmask16 out = first(n);
      _mm512_mask_storeu_ps(y + oh * Wo + ow0, out, m);
      _mm512_mask_storeu_epi32(argmax + oh * Wo + ow0, out, best);
    }
  }
}

void maxpool2_relu_backward_plane_avx512(const float* dy, const int32_t* argmax, const float* relu_out, int H, int W,
                                         float* dx) {
  const int Ho = H / 2, Wo = W / 2;
  for (int i = 0; i < H * W; i += 16) _mm512_mask_storeu_ps(dx + i, first(H * W - i), _mm512_setzero_ps());
  // Lane l of the even (odd) vector is window column l's left (right) input.
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
  const __m512i two_lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int oh = 0; oh < Ho; ++oh)
    for (int ow0 = 0; ow0 < Wo; ow0 += 16) {
      const int n = Wo - ow0 < 16 ? Wo - ow0 : 16;
      const __mmask16 m = first(n);
      const __m512 g = _mm512_add_ps(_mm512_setzero_ps(), _mm512_maskz_loadu_ps(m, dy + oh * Wo + ow0));
      const __m512i a = _mm512_maskz_loadu_epi32(m, argmax + oh * Wo + ow0);
      const __m512i i0 = _mm512_add_epi32(_mm512_set1_epi32(2 * oh * W + 2 * ow0), two_lanes);
      for (int row = 0; row < 2; ++row) {
        const __m512i left = _mm512_add_epi32(i0, _mm512_set1_epi32(row * W));
        const __m512i right = _mm512_add_epi32(left, _mm512_set1_epi32(1));
        const float* y = relu_out + (2 * oh + row) * W + 2 * ow0;
        const __m512 y0 = _mm512_maskz_loadu_ps(first(2 * n), y), y1 = _mm512_maskz_loadu_ps(first(2 * n - 16), y + 16);
        // Deinterleave the ReLU outputs: left and right inputs of each window.
        const __m512 yl = _mm512_permutex2var_ps(y0, two_lanes, y1);
        const __m512 yr = _mm512_permutex2var_ps(y0, _mm512_add_epi32(two_lanes, _mm512_set1_epi32(1)), y1);
        const __mmask16 take_l = _mm512_cmpeq_epi32_mask(a, left) & _mm512_cmp_ps_mask(yl, _mm512_setzero_ps(), _CMP_GT_OQ) & m;
        const __mmask16 take_r = _mm512_cmpeq_epi32_mask(a, right) & _mm512_cmp_ps_mask(yr, _mm512_setzero_ps(), _CMP_GT_OQ) & m;
        const __m512 vl = _mm512_maskz_mov_ps(take_l, g), vr = _mm512_maskz_mov_ps(take_r, g);
        // Interleave back to input order and store the 2n inputs of this row.
        float* d = dx + (2 * oh + row) * W + 2 * ow0;
        _mm512_mask_storeu_ps(d, first(2 * n), _mm512_permutex2var_ps(vl, lo_idx, vr));
        _mm512_mask_storeu_ps(d + 16, first(2 * n - 16), _mm512_permutex2var_ps(vl, hi_idx, vr));
      }
    }
}

void col2im_plain_avx512(const float* col, int ld, int C, int H, int W, int k, float* dx) {
  const int Ho = H - k + 1, Wo = W - k + 1;
  constexpr int kRows = 4;
  // Each 16-wide piece of an input row is summed in a register and stored once: adding into dx in memory made each
  // load wait on a masked store to the same place (masked stores do not forward), 27% of an input gradient. Four
  // rows at a time keep four addition chains in flight. Each element's contributions still arrive in (ki, kj)
  // order, onto 0, as in the scalar loop.
  for (int c = 0; c < C; ++c)
    for (int h0 = 0; h0 < H; h0 += kRows)
      for (int w0 = 0; w0 < W; w0 += 16) {
        __m512 acc[kRows];
        for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
        for (int ki = 0; ki < k; ++ki)
          for (int kj = 0; kj < k; ++kj) {
            // Lane l is output column w0 + l - kj, inside the map for lanes kj - w0 .. kj - w0 + Wo - 1.
            const int l0 = kj - w0 < 0 ? 0 : kj - w0, l1 = kj - w0 + Wo > 16 ? 16 : kj - w0 + Wo;
            if (l1 <= l0) continue;
            const __mmask16 m = static_cast<__mmask16>(first(l1) & ~first(l0));
            // The vector's address may lie before its row (lanes below l0): masked lanes are neither read nor able
            // to fault.
            const float* src = col + static_cast<long>((c * k + ki) * k + kj) * ld + (w0 - kj);
            for (int r = 0; r < kRows; ++r) {
              const int oh = h0 + r - ki;
              if (h0 + r < H && oh >= 0 && oh < Ho)
                acc[r] = _mm512_add_ps(acc[r], _mm512_maskz_loadu_ps(m, src + static_cast<long>(oh) * Wo));
            }
          }
        for (int r = 0; r < kRows && h0 + r < H; ++r)
          _mm512_mask_storeu_ps(dx + (c * H + h0 + r) * W + w0, first(W - w0), acc[r]);
      }
}

}  // namespace nudge::cpu
