// The arithmetic of max- and average-pooling windows, once for the CPU backend (host/cpu/cpu_layers.cpp) and the
// CUDA kernels (kernels/maxpool.cu, kernels/avgpool.cu), so that both pick the same maximum and add in the same order.
//
// A window (oh, ow) covers input rows oh*stride - pad .. oh*stride - pad + k - 1 (likewise columns); positions
// outside the map are padding, which max-pooling never chooses (as PyTorch's and ONNX's -inf padding) and which
// average-pooling does not have (nudge's avgpool has no padding, so every divisor is k*k).
// Backward passes are gathers: input element (h, w) adds the gradients of the windows that cover it, visiting them in
// row-major order of the output, which is the order a scatter over the outputs into zeros would add them in, so the
// CPU's and the GPU's sums are the same sums.
#pragma once
#include <cstdint>

#include "host_device.h"
#include "window.h"

namespace nudge {

// Index h*W + w within the plane of the first maximum (row-major) of window (oh, ow), padding skipped. The caller
// guarantees that the window holds at least one real pixel (pad <= k/2, checked by Architecture::parse).
NUDGE_HD int maxpool_window_argmax(const float* plane, int H, int W, Window win, int oh, int ow) {
  const int h0 = oh * win.stride - win.pad, w0 = ow * win.stride - win.pad;
  const int ha = h0 < 0 ? 0 : h0, wa = w0 < 0 ? 0 : w0;
  const int hb = h0 + win.k > H ? H : h0 + win.k, wb = w0 + win.k > W ? W : w0 + win.k;
  int best = ha * W + wa;
  float best_v = plane[best];
  for (int h = ha; h < hb; ++h)
    for (int w = wa; w < wb; ++w) {
      const float v = plane[h * W + w];
      if (v > best_v) {  // strictly greater: the first maximum wins ties
        best = h * W + w;
        best_v = v;
      }
    }
  return best;
}

// Mean of window (oh, ow) of a pad-free average pool: the sum in row-major order, divided by k*k.
NUDGE_HD float avgpool_window_mean(const float* plane, int W, Window win, int oh, int ow) {
  const int h0 = oh * win.stride, w0 = ow * win.stride;
  float s = 0.0f;
  for (int h = h0; h < h0 + win.k; ++h)
    for (int w = w0; w < w0 + win.k; ++w) s += plane[h * W + w];
  return s / static_cast<float>(win.k * win.k);
}

// The output positions o in [lo, hi] (inclusive; empty when lo > hi) whose window covers input position i along one
// axis: o*stride - pad <= i <= o*stride - pad + k - 1, 0 <= o < out.
NUDGE_HD void pool_windows_covering(int i, Window win, int out, int* lo, int* hi) {
  const int top = i + win.pad;              // o*stride <= top
  const int bottom = top - win.k + 1;       // o*stride >= bottom
  *hi = top / win.stride;                   // top >= 0 always
  *lo = bottom <= 0 ? 0 : (bottom + win.stride - 1) / win.stride;
  if (*hi > out - 1) *hi = out - 1;
}

// dx at input (h, w) of max-pooling: the sum of dy over the windows whose argmax is (h, w).
NUDGE_HD float maxpool_input_grad(const float* dy_plane, const int32_t* argmax_plane, int W, int Ho, int Wo,
                                  Window win, int h, int w) {
  int oh0, oh1, ow0, ow1;
  pool_windows_covering(h, win, Ho, &oh0, &oh1);
  pool_windows_covering(w, win, Wo, &ow0, &ow1);
  const int32_t me = h * W + w;
  float g = 0.0f;
  for (int oh = oh0; oh <= oh1; ++oh)
    for (int ow = ow0; ow <= ow1; ++ow)
      if (argmax_plane[oh * Wo + ow] == me) g += dy_plane[oh * Wo + ow];
  return g;
}

// dx at input (h, w) of a pad-free average pool: the sum over covering windows of dy / (k*k).
NUDGE_HD float avgpool_input_grad(const float* dy_plane, int Ho, int Wo, Window win, int h, int w) {
  int oh0, oh1, ow0, ow1;
  pool_windows_covering(h, win, Ho, &oh0, &oh1);
  pool_windows_covering(w, win, Wo, &ow0, &ow1);
  const float count = static_cast<float>(win.k * win.k);
  float g = 0.0f;
  for (int oh = oh0; oh <= oh1; ++oh)
    for (int ow = ow0; ow <= ow1; ++ow) g += dy_plane[oh * Wo + ow] / count;
  return g;
}

}  // namespace nudge
