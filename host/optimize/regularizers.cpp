#include "regularizers.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "counter_rng.h"

namespace nudge {

namespace {
float sign(float v) { return static_cast<float>((v > 0) - (v < 0)); }
}  // namespace

float tv_anisotropic(const float* x, int H, int W, float weight, float* grad) {
  double total = 0;
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      const int a = i * W + j;
      if (j + 1 < W) {
        const float d = x[a] - x[a + 1];
        total += std::fabs(d);
        if (grad) {
          grad[a] += weight * sign(d);
          grad[a + 1] -= weight * sign(d);
        }
      }
      if (i + 1 < H) {
        const float d = x[a] - x[a + W];
        total += std::fabs(d);
        if (grad) {
          grad[a] += weight * sign(d);
          grad[a + W] -= weight * sign(d);
        }
      }
    }
  return static_cast<float>(weight * total);
}

float tv_isotropic(const float* x, int H, int W, float weight, float* grad) {
  constexpr float kSmooth = 1e-8f;  // keeps the gradient finite on flat regions
  double total = 0;
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      const int a = i * W + j;
      const float dx = j + 1 < W ? x[a + 1] - x[a] : 0.0f;
      const float dy = i + 1 < H ? x[a + W] - x[a] : 0.0f;
      const float r = std::sqrt(dx * dx + dy * dy + kSmooth);
      total += r;
      if (grad) {
        if (j + 1 < W) {
          grad[a + 1] += weight * dx / r;
          grad[a] -= weight * dx / r;
        }
        if (i + 1 < H) {
          grad[a + W] += weight * dy / r;
          grad[a] -= weight * dy / r;
        }
      }
    }
  return static_cast<float>(weight * total);
}

float l2_decay(const float* x, int D, float center, float weight, float* grad) {
  double total = 0;
  for (int i = 0; i < D; ++i) {
    const float d = x[i] - center;
    total += 0.5 * d * d;
    if (grad) grad[i] += weight * d;
  }
  return static_cast<float>(weight * total);
}

float l1_decay(const float* x, int D, float center, float weight, float* grad) {
  double total = 0;
  for (int i = 0; i < D; ++i) {
    const float d = x[i] - center;
    total += std::fabs(d);
    if (grad) grad[i] += weight * sign(d);
  }
  return static_cast<float>(weight * total);
}

float scaled_l2_decay(const float* c, const float* center, const float* variance, int k, float weight, float* grad) {
  double total = 0;
  for (int j = 0; j < k; ++j) {
    const float d = c[j] - (center ? center[j] : 0.0f);
    total += 0.5 * d * d / variance[j];
    if (grad) grad[j] += weight * d / variance[j];
  }
  return static_cast<float>(weight * total);
}

void gaussian_blur(const float* in, int H, int W, float sigma, float* out) {
  const int r = std::max(1, static_cast<int>(std::ceil(3 * sigma)));
  std::vector<float> k(2 * r + 1), tmp(static_cast<size_t>(H) * W);
  double s = 0;
  for (int i = -r; i <= r; ++i) s += k[i + r] = static_cast<float>(std::exp(-0.5 * i * i / (sigma * sigma)));
  for (float& v : k) v = static_cast<float>(v / s);
  auto clampi = [](int v, int hi) { return std::min(std::max(v, 0), hi - 1); };
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      float acc = 0;
      for (int t = -r; t <= r; ++t) acc += k[t + r] * in[i * W + clampi(j + t, W)];
      tmp[i * W + j] = acc;
    }
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      float acc = 0;
      for (int t = -r; t <= r; ++t) acc += k[t + r] * tmp[clampi(i + t, H) * W + j];
      out[i * W + j] = acc;
    }
}

void shift_image(const float* in, int H, int W, int dy, int dx, float* out) {
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      const int si = i - dy, sj = j - dx;
      out[i * W + j] = si >= 0 && si < H && sj >= 0 && sj < W ? in[si * W + sj] : 0.0f;
    }
}

void unshift_gradient(const float* g, int H, int W, int dy, int dx, float* grad) {
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      const int si = i + dy, sj = j + dx;
      grad[i * W + j] = si >= 0 && si < H && sj >= 0 && sj < W ? g[si * W + sj] : 0.0f;
    }
}

float prior_scale(const RegularizerConfig& reg, int updates) {
  const int past = updates - reg.settle_steps;
  if (reg.prior_decay == 1.0f || past <= 0) return 1.0f;
  return static_cast<float>(std::pow(static_cast<double>(reg.prior_decay), past));
}

void jitter_offsets(uint64_t seed, uint64_t entry, int step, int s, int* dy, int* dx) {
  const Philox4 r = counter_random(seed, kStreamJitter, entry, static_cast<uint32_t>(step));
  const uint64_t span = static_cast<uint64_t>(2 * s + 1);
  *dy = static_cast<int>((static_cast<uint64_t>(r.v[0]) * span) >> 32) - s;
  *dx = static_cast<int>((static_cast<uint64_t>(r.v[1]) * span) >> 32) - s;
}

}  // namespace nudge
