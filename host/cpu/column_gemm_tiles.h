// The one implementation of column_gemm (column_gemm.h), written once over a vector type T and compiled once per
// instruction set (column_gemm.cpp: scalar; column_gemm_avx2.cpp; column_gemm_avx512.cpp). T supplies:
//   V, W (lanes), zero(), bcast(x), load(p), load_first(p, count), fma(a, b, c) (one rounding), add(a, b),
//   relu(v) (v > 0 ? v : 0, so NaN and -0 give +0), store(p, v), store_first(p, v, count),
//   store_lanes(p, v, lane0, len) (lanes lane0 .. lane0+len-1 to p[0 .. len-1]).
// Included only by those files: it uses nothing from the standard library, so the vector files, built with wider
// instruction sets than the rest, define no inline function that the linker could hand to baseline code.
#pragma once
#include "column_gemm.h"

namespace nudge::cpu::gemm_detail {

// Lanes of one vector of a panel that go to consecutive places of a C row.
struct Run {
  int lane0, len;
  std::ptrdiff_t dst;  // from the row's start, c + m*c_row
};

template <int W, int NV>
struct PanelRuns {
  Run run[NV][W];
  int count[NV];
};

// MR x (NV vectors) accumulators: 6 x 2 keeps 12 independent fma chains in flight (enough to hide the fma latency
// on two ports) and fits the 16 registers of AVX2 with the two B vectors and one broadcast.
template <class T, int MR, int NV, bool Full>
void tile(const ColumnGemm& g, const float* b, float* c, int m0, int n0, int last_count,
          const PanelRuns<T::W, NV>* runs) {
  using V = typename T::V;
  constexpr int W = T::W;
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = T::zero();
  const float* a = g.a + m0 * g.a_row;
  b += n0;
  for (int k = 0; k < g.K; ++k) {
    const float* bk = b + g.b_rows[k];
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = Full || v < NV - 1 ? T::load(bk + v * W) : T::load_first(bk + v * W, last_count);
    const float* ak = a + k * g.a_col;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V av = T::bcast(ak[i * g.a_row]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = T::fma(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* crow = c + (m0 + i) * g.c_row;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const bool last = !Full && v == NV - 1;
      V x = acc[i][v];
      if (g.row_bias) x = T::add(x, T::bcast(g.row_bias[m0 + i]));
      if (g.col_bias) x = T::add(x, last ? T::load_first(g.col_bias + n0 + v * W, last_count) : T::load(g.col_bias + n0 + v * W));
      if (g.relu) x = T::relu(x);
      if (!runs) {
        if (last)
          T::store_first(crow + n0 + v * W, x, last_count);
        else
          T::store(crow + n0 + v * W, x);
        continue;
      }
      for (int r = 0; r < runs->count[v]; ++r) {
        const Run& run = runs->run[v][r];
        T::store_lanes(crow + run.dst, x, run.lane0, run.len);
      }
    }
  }
}

// One panel of columns for every item of the batch.
template <class T, int NV, bool Full>
void row_tiles(const ColumnGemm& g, int n0, int last_count, const PanelRuns<T::W, NV>* runs) {
  constexpr int MR = 6;
  for (int item = 0; item < g.batch; ++item) {
    const float* b = g.b + item * g.b_batch;
    float* c = g.c + item * g.c_batch;
    int m0 = 0;
    for (; m0 + MR <= g.M; m0 += MR) tile<T, MR, NV, Full>(g, b, c, m0, n0, last_count, runs);
    switch (g.M - m0) {
      case 5: tile<T, 5, NV, Full>(g, b, c, m0, n0, last_count, runs); break;
      case 4: tile<T, 4, NV, Full>(g, b, c, m0, n0, last_count, runs); break;
      case 3: tile<T, 3, NV, Full>(g, b, c, m0, n0, last_count, runs); break;
      case 2: tile<T, 2, NV, Full>(g, b, c, m0, n0, last_count, runs); break;
      case 1: tile<T, 1, NV, Full>(g, b, c, m0, n0, last_count, runs); break;
      default: break;
    }
  }
}

// Where each lane of the panel at n0 (cols columns, NV vectors) goes.
template <int W, int NV>
void plan_runs(const ColumnGemm& g, int n0, int cols, PanelRuns<W, NV>& p) {
  for (int v = 0; v < NV; ++v) {
    p.count[v] = 0;
    for (int lane = 0; lane < W && v * W + lane < cols; ++lane) {
      const int n = n0 + v * W + lane, s = n / g.seg_period, j = n - s * g.seg_period;
      if (j >= g.seg_len) continue;
      const std::ptrdiff_t dst = s * g.seg_stride + j;
      Run* last = p.count[v] ? &p.run[v][p.count[v] - 1] : nullptr;
      if (last && last->lane0 + last->len == lane && last->dst + last->len == dst) {
        ++last->len;
      } else {
        p.run[v][p.count[v]++] = Run{lane, 1, dst};
      }
    }
  }
}

template <class T>
void column_gemm_with(const ColumnGemm& g) {
  constexpr int W = T::W, NV = 2, NR = W * NV;
  const bool one_segment = g.seg_period >= g.N && g.seg_len >= g.N;
  PanelRuns<W, NV> runs2;
  PanelRuns<W, 1> runs1;
  for (int n0 = 0; n0 < g.N; n0 += NR) {
    const int cols = g.N - n0 < NR ? g.N - n0 : NR;
    if (cols == NR) {
      if (!one_segment) plan_runs(g, n0, cols, runs2);
      row_tiles<T, NV, true>(g, n0, W, one_segment ? nullptr : &runs2);
    } else if (cols > W) {
      if (!one_segment) plan_runs(g, n0, cols, runs2);
      row_tiles<T, NV, false>(g, n0, cols - W, one_segment ? nullptr : &runs2);
    } else {
      if (!one_segment) plan_runs(g, n0, cols, runs1);
      row_tiles<T, 1, false>(g, n0, cols, one_segment ? nullptr : &runs1);
    }
  }
}

}  // namespace nudge::cpu::gemm_detail
