// Serial per-call kernels: the CPU backend parallelises one level up (each thread runs the whole network on its own
// slice of the batch), which keeps every image's activations in that core's cache and needs no barrier per layer.
#include "cpu_layers.h"

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
// model) alone would make 9-column GEMMs that run far below the BLAS kernel's speed.
int group_size(int N, int P) { return std::max(1, std::min(N, (256 + P - 1) / P)); }

thread_local std::vector<float> tl_grouped;

float* grouped_buffer(size_t n) {
  if (tl_grouped.size() < n) tl_grouped.resize(n);
  return tl_grouped.data();
}

}  // namespace

void conv2d_forward(const float* x, int N, Shape3 in, const float* w, const float* b, int K, Window win, float* y) {
  const int k = win.k, P = win.out(in.h) * win.out(in.w), R = in.c * k * k;
  const int G = group_size(N, P);
  float* col = col_buffer(static_cast<size_t>(R) * P * G);
  float* out = grouped_buffer(static_cast<size_t>(K) * P * G);
  for (int n0 = 0; n0 < N; n0 += G) {
    const int g = std::min(G, N - n0), cols = g * P;
    // col is [R, g*P]: image j's patches occupy columns j*P .. j*P+P-1.
    for (int j = 0; j < g; ++j) im2col_strided(x + static_cast<size_t>(n0 + j) * in.size(), in, win, col + j * P, cols);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, cols, R, 1.0f, w, R, col, cols, 0.0f, out, cols);
    for (int j = 0; j < g; ++j) {
      float* yn = y + static_cast<size_t>(n0 + j) * K * P;
      for (int o = 0; o < K; ++o) {
        const float* src = out + static_cast<size_t>(o) * cols + j * P;
        for (int p = 0; p < P; ++p) yn[o * P + p] = src[p] + b[o];
      }
    }
  }
}

void conv2d_backward_data(const float* dy, int N, Shape3 in, const float* w, int K, Window win, float* dx) {
  const int k = win.k, P = win.out(in.h) * win.out(in.w), R = in.c * k * k;
  const int G = group_size(N, P);
  float* col = col_buffer(static_cast<size_t>(R) * P * G);
  float* dyg = grouped_buffer(static_cast<size_t>(K) * P * G);
  for (int n0 = 0; n0 < N; n0 += G) {
    const int g = std::min(G, N - n0), cols = g * P;
    for (int j = 0; j < g; ++j)
      for (int o = 0; o < K; ++o)
        std::memcpy(dyg + static_cast<size_t>(o) * cols + j * P, dy + (static_cast<size_t>(n0 + j) * K + o) * P, sizeof(float) * P);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, cols, K, 1.0f, w, R, dyg, cols, 0.0f, col, cols);
    for (int j = 0; j < g; ++j) {
      float* dxn = dx + static_cast<size_t>(n0 + j) * in.size();
      std::fill(dxn, dxn + in.size(), 0.0f);
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
  for (int nc = 0; nc < N * in.c; ++nc) {
    const float* xp = x + static_cast<size_t>(nc) * in.h * in.w;
    float* yp = y + static_cast<size_t>(nc) * Ho * Wo;
    int32_t* ap = argmax + static_cast<size_t>(nc) * Ho * Wo;
    if (disjoint2) {
      // The common window, unrolled; comparisons in row-major order keep "first maximum wins", as
      // maxpool_window_argmax does.
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          const int i0 = 2 * oh * in.w + 2 * ow, i1 = i0 + 1, i2 = i0 + in.w, i3 = i2 + 1;
          int best = i0;
          best = xp[i1] > xp[best] ? i1 : best;
          best = xp[i2] > xp[best] ? i2 : best;
          best = xp[i3] > xp[best] ? i3 : best;
          yp[oh * Wo + ow] = xp[best];
          ap[oh * Wo + ow] = best;
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

void dense_forward(const float* x, int N, int in, const float* w, const float* b, int out, float* y) {
  for (int n = 0; n < N; ++n) std::copy(b, b + out, y + static_cast<size_t>(n) * out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, w, in, 1.0f, y, out);
}

void dense_backward_data(const float* dy, int N, int in, const float* w, int out, float* dx) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
}

void dense_backward_params(const float* x, const float* dy, int N, int in, int out, float* dw, float* db) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, N, 1.0f, dy, out, x, in, 0.0f, dw, in);
  std::fill(db, db + out, 0.0f);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) db[o] += dy[static_cast<size_t>(n) * out + o];
}

}  // namespace nudge::cpu
