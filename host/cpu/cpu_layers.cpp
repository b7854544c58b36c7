// Serial per-call kernels: the CPU backend parallelises one level up (each thread runs the whole network on its own
// slice of the batch), which keeps every image's activations in that core's cache and needs no barrier per layer.
#include "cpu_layers.h"

#include "column_gemm.h"
#include "cpu_isa.h"
#include "layers_isa.h"
#include "pool_math.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace nudge::cpu {

namespace {

// col [(c*k + ki)*k + kj, oh*Wo + ow] = x[c, oh*s - p + ki, ow*s - p + kj] (0 in the padding): one image's patches
// as a (C*k*k) x (Ho*Wo) block of a matrix whose rows are `ld` floats apart.
void im2col_strided(const float* x, Shape3 in, Window win, float* col, int ld) {
  const int k = win.k, Ho = win.out(in.h), Wo = win.out(in.w);
  if (!win.plain()) {
    for (int c = 0; c < in.c; ++c)
      for (int ki = 0; ki < k; ++ki)
        for (int kj = 0; kj < k; ++kj) {
          float* dst = col + static_cast<size_t>((c * k + ki) * k + kj) * ld;
          for (int oh = 0; oh < Ho; ++oh) {
            const int ih = oh * win.stride - win.pad + ki;
            const bool row_in = ih >= 0 && ih < in.h;
            const float* src = x + (c * in.h + (row_in ? ih : 0)) * in.w;
            for (int ow = 0; ow < Wo; ++ow) {
              const int iw = ow * win.stride - win.pad + kj;
              dst[oh * Wo + ow] = row_in && iw >= 0 && iw < in.w ? src[iw] : 0.0f;
            }
          }
        }
    return;
  }
  for (int c = 0; c < in.c; ++c)
    for (int ki = 0; ki < k; ++ki)
      for (int kj = 0; kj < k; ++kj) {
        float* __restrict dst = col + static_cast<size_t>((c * k + ki) * k + kj) * ld;
        const float* __restrict src = x + (c * in.h + ki) * in.w + kj;
        // memcpy per row: glibc's vector copy beat the element loop (24% of a Square run's samples in im2col
        // before, 18% after, 2026-12-03, perf on the 2-core VM; this build is baseline x86-64, glibc is not).
        for (int oh = 0; oh < Ho; ++oh) std::memcpy(dst + oh * Wo, src + oh * in.w, sizeof(float) * Wo);
      }
}

// The adjoint of im2col_strided: dx[c, oh*s - p + ki, ow*s - p + kj] += col[...] (padding dropped). dx must be
// zeroed by the caller.
void col2im_strided(const float* col, int ld, Shape3 in, Window win, float* dx) {
  const int k = win.k, Ho = win.out(in.h), Wo = win.out(in.w);
  if (!win.plain()) {
    for (int c = 0; c < in.c; ++c)
      for (int ki = 0; ki < k; ++ki)
        for (int kj = 0; kj < k; ++kj) {
          const float* src = col + static_cast<size_t>((c * k + ki) * k + kj) * ld;
          for (int oh = 0; oh < Ho; ++oh) {
            const int ih = oh * win.stride - win.pad + ki;
            if (ih < 0 || ih >= in.h) continue;
            float* dst = dx + (c * in.h + ih) * in.w;
            for (int ow = 0; ow < Wo; ++ow) {
              const int iw = ow * win.stride - win.pad + kj;
              if (iw >= 0 && iw < in.w) dst[iw] += src[oh * Wo + ow];
            }
          }
        }
    return;
  }
#if NUDGE_X86_KERNELS
  if (best_cpu_isa() == CpuIsa::Avx512) {
    col2im_plain_avx512(col, ld, in.c, in.h, in.w, k, dx);
    return;
  }
#endif
  for (int c = 0; c < in.c; ++c)
    for (int ki = 0; ki < k; ++ki)
      for (int kj = 0; kj < k; ++kj) {
        const float* src = col + static_cast<size_t>((c * k + ki) * k + kj) * ld;
        float* dst = dx + (c * in.h + ki) * in.w + kj;
        for (int oh = 0; oh < Ho; ++oh)
          for (int ow = 0; ow < Wo; ++ow) dst[oh * in.w + ow] += src[oh * Wo + ow];
      }
}

thread_local std::vector<float> tl_col;

float* col_buffer(size_t n) {
  if (tl_col.size() < n) tl_col.resize(n);
  return tl_col.data();
}

// Images are processed in groups so that each GEMM has at least ~256 columns: a 3x3 map (conv3 of the reference
// model) alone would make 9-column GEMMs that run far below the kernel's speed.
int group_size(int N, int P) { return std::max(1, std::min(N, (256 + P - 1) / P)); }

thread_local std::vector<float> tl_grouped;

float* grouped_buffer(size_t n) {
  if (tl_grouped.size() < n) tl_grouped.resize(n);
  return tl_grouped.data();
}

thread_local std::vector<std::ptrdiff_t> tl_rows;

// B's row offsets: rows `stride` floats apart.
const std::ptrdiff_t* strided_rows(int R, std::ptrdiff_t stride) {
  tl_rows.resize(R);
  for (int r = 0; r < R; ++r) tl_rows[r] = r * stride;
  return tl_rows.data();
}

// C [M,N] = A [M,K] B [K,N], each row-major and dense.
ColumnGemm row_major_product(int M, int N, int K, const float* a, const float* b, float* c) {
  ColumnGemm g;
  g.M = M;
  g.N = g.seg_period = g.seg_len = N;
  g.K = K;
  g.a = a;
  g.a_row = K;
  g.a_col = 1;
  g.b = b;
  g.b_rows = strided_rows(K, N);
  g.c = c;
  g.c_row = N;
  return g;
}

// The product's A side for a convolution: the filters [K, R] as rows, the bias per row, and the ReLU if it follows.
ColumnGemm filters_times(const float* w, const float* b, int K, int R, bool relu) {
  ColumnGemm g;
  g.M = K;
  g.K = R;
  g.a = w;
  g.a_row = R;
  g.a_col = 1;
  g.row_bias = b;
  g.relu = relu;
  return g;
}

// A valid stride-1 convolution computed straight from the image, outputs (oh, ow) in [oh0, oh1) x [ow0, ow1) of N
// images: B's row (c, ki, kj) is the input plane c shifted by (ki, kj), read over whole input rows, so column
// n = (oh - oh0)*W + (ow - ow0) and the W - (ow1 - ow0) other columns of each row are computed and dropped. The last
// row ends at column (oh1 - oh0 - 1)*W + (ow1 - ow0): every read stays inside the image.
void direct_conv(const float* x, int N, Shape3 in, const float* w, const float* b, int K, int k, float* y, int oh0,
                 int oh1, int ow0, int ow1, bool relu) {
  if (oh0 >= oh1 || ow0 >= ow1) return;
  const int Ho = in.h - k + 1, Wo = in.w - k + 1, R = in.c * k * k;
  ColumnGemm g = filters_times(w, b, K, R, relu);
  tl_rows.resize(R);
  for (int c = 0; c < in.c; ++c)
    for (int ki = 0; ki < k; ++ki)
      for (int kj = 0; kj < k; ++kj) tl_rows[(c * k + ki) * k + kj] = (c * in.h + ki) * in.w + kj;
  g.b_rows = tl_rows.data();
  g.b = x + oh0 * in.w + ow0;
  g.N = (oh1 - oh0 - 1) * in.w + (ow1 - ow0);
  g.seg_period = in.w;
  g.seg_len = ow1 - ow0;
  g.seg_stride = Wo;
  g.c = y + oh0 * Wo + ow0;
  g.c_row = Ho * Wo;
  g.batch = N;
  g.b_batch = in.size();
  g.c_batch = static_cast<std::ptrdiff_t>(K) * Ho * Wo;
  column_gemm(g);
}

// The direct product is worth it when output rows are wide enough that few lanes are dropped.
bool direct_pays(Shape3 in, Window win) { return win.plain() && win.out(in.w) >= 8; }

}  // namespace

void conv2d_forward(const float* x, int N, Shape3 in, const float* w, const float* b, int K, Window win, float* y,
                    bool relu) {
  const int k = win.k, Ho = win.out(in.h), Wo = win.out(in.w), P = Ho * Wo, R = in.c * k * k;
  if (direct_pays(in, win)) {
    direct_conv(x, N, in, w, b, K, k, y, 0, Ho, 0, Wo, relu);
    return;
  }
  ColumnGemm g = filters_times(w, b, K, R, relu);
  g.c_row = P;
  const int G = group_size(N, P);
  float* col = col_buffer(static_cast<size_t>(R) * P * G);
  g.b = col;
  g.seg_period = g.seg_len = P;
  g.seg_stride = static_cast<std::ptrdiff_t>(K) * P;
  for (int n0 = 0; n0 < N; n0 += G) {
    const int gn = std::min(G, N - n0), cols = gn * P;
    // col is [R, gn*P]: image j's patches occupy columns j*P .. j*P+P-1, and its outputs go to image j's planes.
    for (int j = 0; j < gn; ++j) im2col_strided(x + static_cast<size_t>(n0 + j) * in.size(), in, win, col + j * P, cols);
    g.N = cols;
    g.b_rows = strided_rows(R, cols);
    g.c = y + static_cast<size_t>(n0) * K * P;
    column_gemm(g);
  }
}

void conv2d_forward_rect(const float* x, Shape3 in, const float* w, const float* b, int K, int k, float* y, int oh0,
                         int oh1, int ow0, int ow1, bool relu) {
  direct_conv(x, 1, in, w, b, K, k, y, oh0, oh1, ow0, ow1, relu);
}

void conv2d_backward_data(const float* dy, int N, Shape3 in, const float* w, int K, Window win, float* dx) {
  const int k = win.k, P = win.out(in.h) * win.out(in.w), R = in.c * k * k;
  const int G = group_size(N, P);
  float* col = col_buffer(static_cast<size_t>(R) * P * G);
  // dcol [R, P] per image = w^T dy: A(r, o) = w[o*R + r], B's rows are dy's channel planes.
  ColumnGemm g;
  g.M = R;
  g.K = K;
  g.a = w;
  g.a_row = 1;
  g.a_col = R;
  // Maps of 32 or more pixels are read where they lie, one image per item; smaller ones (conv3's 3x3) are first
  // gathered into rows of several images, so that a vector is not mostly masked lanes. Either way every element is
  // the same sum in the same order.
  const bool in_place = P >= 32;
  float* dyg = in_place ? nullptr : grouped_buffer(static_cast<size_t>(K) * P * G);
  for (int n0 = 0; n0 < N; n0 += G) {
    const int gn = std::min(G, N - n0), cols = gn * P;
    if (in_place) {
      g.N = g.seg_period = g.seg_len = P;
      g.b = dy + static_cast<size_t>(n0) * K * P;
      g.b_rows = strided_rows(K, P);
      g.c = col;
      g.c_row = P;
      g.batch = gn;
      g.b_batch = static_cast<std::ptrdiff_t>(K) * P;
      g.c_batch = static_cast<std::ptrdiff_t>(R) * P;
    } else {
      for (int j = 0; j < gn; ++j)
        for (int o = 0; o < K; ++o)
          std::memcpy(dyg + static_cast<size_t>(o) * cols + j * P, dy + (static_cast<size_t>(n0 + j) * K + o) * P, sizeof(float) * P);
      g.N = g.seg_period = g.seg_len = cols;
      g.b = dyg;
      g.b_rows = strided_rows(K, cols);
      g.c = col;
      g.c_row = cols;
    }
    column_gemm(g);
    for (int j = 0; j < gn; ++j) {
      float* dxn = dx + static_cast<size_t>(n0 + j) * in.size();
      std::fill(dxn, dxn + in.size(), 0.0f);
      if (in_place)
        col2im_strided(col + static_cast<size_t>(j) * R * P, P, in, win, dxn);
      else
        col2im_strided(col + j * P, cols, in, win, dxn);
    }
  }
}

void conv2d_backward_filter(const float* x, const float* dy, int N, Shape3 in, int K, Window win, float* dw, float* db) {
  const int k = win.k, P = win.out(in.h) * win.out(in.w), R = in.c * k * k;
  const int G = group_size(N, P);
  float* col = col_buffer(static_cast<size_t>(R) * P * G);
  float* dyg = grouped_buffer(static_cast<size_t>(K) * P * G);
  std::fill(dw, dw + static_cast<size_t>(K) * R, 0.0f);
  std::fill(db, db + K, 0.0f);
  for (int n0 = 0; n0 < N; n0 += G) {
    const int g = std::min(G, N - n0), cols = g * P;
    for (int j = 0; j < g; ++j) {
      im2col_strided(x + static_cast<size_t>(n0 + j) * in.size(), in, win, col + j * P, cols);
      for (int o = 0; o < K; ++o)
        std::memcpy(dyg + static_cast<size_t>(o) * cols + j * P, dy + (static_cast<size_t>(n0 + j) * K + o) * P, sizeof(float) * P);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, R, cols, 1.0f, dyg, cols, col, cols, 1.0f, dw, R);
    for (int o = 0; o < K; ++o) {
      float s = 0;
      for (int p = 0; p < cols; ++p) s += dyg[static_cast<size_t>(o) * cols + p];
      db[o] += s;
    }
  }
}

void relu_forward(const float* x, size_t n, float* y) {
  for (size_t i = 0; i < n; ++i) y[i] = x[i] > 0 ? x[i] : 0.0f;
}

void relu_backward(const float* y, const float* dy, size_t n, float* dx) {
  // dy is loaded unconditionally so that the compiler can turn the select into a vector blend; written as
  // `y > 0 ? dy[i] : 0` it became a branch per element, mispredicted half the time (29% of an optimize run).
  for (size_t i = 0; i < n; ++i) {
    const float g = dy[i];
    dx[i] = y[i] > 0 ? g : 0.0f;
  }
}

void maxpool_forward(const float* x, int N, Shape3 in, Window win, float* y, int32_t* argmax) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  const bool disjoint2 = win.k == 2 && win.stride == 2 && win.pad == 0;
#if NUDGE_X86_KERNELS
  const bool vector2 = disjoint2 && best_cpu_isa() == CpuIsa::Avx512;
#endif
  for (int nc = 0; nc < N * in.c; ++nc) {
    const float* xp = x + static_cast<size_t>(nc) * in.h * in.w;
    float* yp = y + static_cast<size_t>(nc) * Ho * Wo;
    int32_t* ap = argmax + static_cast<size_t>(nc) * Ho * Wo;
#if NUDGE_X86_KERNELS
    if (vector2) {
      maxpool2_plane_avx512(xp, in.h, in.w, yp, ap);
      continue;
    }
#endif
    if (disjoint2) {
      // The common window, unrolled; comparisons in row-major order keep "first maximum wins", as
      // maxpool_window_argmax does. The running maximum stays in a register (reloading xp[best] after each select
      // made a load-compare-select chain per window).
      for (int oh = 0; oh < Ho; ++oh) {
        const float* r0 = xp + 2 * oh * in.w;
        const float* r1 = r0 + in.w;
        for (int ow = 0; ow < Wo; ++ow) {
          const int i0 = 2 * oh * in.w + 2 * ow;
          float m = r0[2 * ow];
          int best = i0;
          const float v1 = r0[2 * ow + 1], v2 = r1[2 * ow], v3 = r1[2 * ow + 1];
          const bool g1 = v1 > m;
          m = g1 ? v1 : m;
          best = g1 ? i0 + 1 : best;
          const bool g2 = v2 > m;
          m = g2 ? v2 : m;
          best = g2 ? i0 + in.w : best;
          const bool g3 = v3 > m;
          m = g3 ? v3 : m;
          best = g3 ? i0 + in.w + 1 : best;
          yp[oh * Wo + ow] = m;
          ap[oh * Wo + ow] = best;
        }
      }
      continue;
    }
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow) {
        const int best = maxpool_window_argmax(xp, in.h, in.w, win, oh, ow);
        yp[oh * Wo + ow] = xp[best];
        ap[oh * Wo + ow] = best;
      }
  }
}

void maxpool_relu_backward(const float* dy, const int32_t* argmax, const float* relu_out, int N, Shape3 in, Window win,
                           float* dx) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
#if NUDGE_X86_KERNELS
  if (win.k == 2 && win.stride == 2 && win.pad == 0 && best_cpu_isa() == CpuIsa::Avx512) {
    for (int nc = 0; nc < N * in.c; ++nc) {
      const size_t plane = static_cast<size_t>(nc) * in.h * in.w, outs = static_cast<size_t>(nc) * Ho * Wo;
      maxpool2_relu_backward_plane_avx512(dy + outs, argmax + outs, relu_out + plane, in.h, in.w, dx + plane);
    }
    return;
  }
#endif
  for (int nc = 0; nc < N * in.c; ++nc) {
    const size_t plane = static_cast<size_t>(nc) * in.h * in.w;
    float* dxp = dx + plane;
    const float* yp = relu_out + plane;
    const float* dyp = dy + static_cast<size_t>(nc) * Ho * Wo;
    const int32_t* ap = argmax + static_cast<size_t>(nc) * Ho * Wo;
    std::fill(dxp, dxp + in.h * in.w, 0.0f);
    // 0 + dy, as the unfused pair computes it (so that -0 comes out +0 there too).
    for (int o = 0; o < Ho * Wo; ++o) dxp[ap[o]] = yp[ap[o]] > 0 ? 0.0f + dyp[o] : 0.0f;
  }
}

void maxpool_backward(const float* dy, const int32_t* argmax, int N, Shape3 in, Window win, float* dx) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  for (int nc = 0; nc < N * in.c; ++nc) {
    float* dxp = dx + static_cast<size_t>(nc) * in.h * in.w;
    const float* dyp = dy + static_cast<size_t>(nc) * Ho * Wo;
    const int32_t* ap = argmax + static_cast<size_t>(nc) * Ho * Wo;
    if (win.stride >= win.k) {
      // Disjoint windows: every input has at most one, so a scatter into zeros is the gather's sum.
      std::fill(dxp, dxp + in.h * in.w, 0.0f);
      for (int o = 0; o < Ho * Wo; ++o) dxp[ap[o]] += dyp[o];
      continue;
    }
    for (int h = 0; h < in.h; ++h)
      for (int w = 0; w < in.w; ++w) dxp[h * in.w + w] = maxpool_input_grad(dyp, ap, in.w, Ho, Wo, win, h, w);
  }
}

void avgpool_forward(const float* x, int N, Shape3 in, Window win, float* y) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  for (int nc = 0; nc < N * in.c; ++nc) {
    const float* xp = x + static_cast<size_t>(nc) * in.h * in.w;
    float* yp = y + static_cast<size_t>(nc) * Ho * Wo;
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow) yp[oh * Wo + ow] = avgpool_window_mean(xp, in.w, win, oh, ow);
  }
}

void avgpool_backward(const float* dy, int N, Shape3 in, Window win, float* dx) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  for (int nc = 0; nc < N * in.c; ++nc) {
    float* dxp = dx + static_cast<size_t>(nc) * in.h * in.w;
    const float* dyp = dy + static_cast<size_t>(nc) * Ho * Wo;
    for (int h = 0; h < in.h; ++h)
      for (int w = 0; w < in.w; ++w) dxp[h * in.w + w] = avgpool_input_grad(dyp, Ho, Wo, win, h, w);
  }
}

thread_local std::vector<float> tl_wt;

void dense_forward(const float* x, int N, int in, const float* w, const float* b, int out, float* y, bool relu) {
  // y = x w^T + b with B = w^T [in, out] (one transpose per call, shared by the whole batch).
  if (tl_wt.size() < static_cast<size_t>(in) * out) tl_wt.resize(static_cast<size_t>(in) * out);
  // In 8 x 8 blocks, so that neither side is read or written one float per cache line.
  constexpr int kBlock = 8;
  for (int o0 = 0; o0 < out; o0 += kBlock)
    for (int i0 = 0; i0 < in; i0 += kBlock)
      for (int o = o0; o < std::min(out, o0 + kBlock); ++o)
        for (int i = i0; i < std::min(in, i0 + kBlock); ++i)
          tl_wt[static_cast<size_t>(i) * out + o] = w[static_cast<size_t>(o) * in + i];
  dense_forward_wt(x, N, in, tl_wt.data(), b, out, y, relu);
}

void dense_forward_wt(const float* x, int N, int in, const float* wt, const float* b, int out, float* y, bool relu) {
  ColumnGemm g = row_major_product(N, out, in, x, wt, y);
  g.col_bias = b;
  g.relu = relu;
  column_gemm(g);
}

void dense_backward_data(const float* dy, int N, int in, const float* w, int out, float* dx) {
  column_gemm(row_major_product(N, in, out, dy, w, dx));
}

void dense_backward_params(const float* x, const float* dy, int N, int in, int out, float* dw, float* db) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, N, 1.0f, dy, out, x, in, 0.0f, dw, in);
  std::fill(db, db + out, 0.0f);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) db[o] += dy[static_cast<size_t>(n) * out + o];
}

}  // namespace nudge::cpu
