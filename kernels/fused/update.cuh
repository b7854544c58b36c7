// The fused kernel's optimizer step and projection (kernels/fused/fused_optimize.cu), the twin of
// input_update_one (host/input_step.cpp). The per-pixel maths (bias_correction, pixel_step, linf_clip, clamp01,
// l2_factor, l2_pull) are small functions of their own, apart from the phases that map threads to pixels, so that a
// shared host+device header of them can replace them here one for one.
#pragma once
#include <cmath>

#include "layout.cuh"

namespace nudge::cuda::fused {

// ---- per-pixel maths ------------------------------------------------------------------------------------------------
// Adam's bias corrections 1 - beta^t for the update's 1-based step count t; 1 for SGD and sign, which do not use them.
struct BiasCorrection {
  float c1 = 1.0f, c2 = 1.0f;
};

FUSED_HD BiasCorrection bias_correction(const FusedParams& p, int step) {
  BiasCorrection bc;
  if (p.optimizer == InputOptimizer::Adam) {
    bc.c1 = 1.0f - powf(p.beta1, static_cast<float>(step));
    bc.c2 = 1.0f - powf(p.beta2, static_cast<float>(step));
  }
  return bc;
}

// Pixel j (of the [entries, D] arrays) moved by one optimizer step against its gradient gi. Adam also updates the
// pixel's moments m[j], v[j].
FUSED_HD float pixel_step(const FusedParams& p, size_t j, float xi, float gi, BiasCorrection bc) {
  switch (p.optimizer) {
    case InputOptimizer::Adam: {
      const float mi = p.beta1 * p.m[j] + (1.0f - p.beta1) * gi;
      const float vi = p.beta2 * p.v[j] + (1.0f - p.beta2) * gi * gi;
      p.m[j] = mi;
      p.v[j] = vi;
      xi -= p.lr * (mi / bc.c1) / (sqrtf(vi / bc.c2) + p.adam_eps);
      break;
    }
    case InputOptimizer::Sgd: xi -= p.lr * gi; break;
    case InputOptimizer::Sign: xi -= p.lr * static_cast<float>((gi > 0) - (gi < 0)); break;
  }
  return xi;
}

// The L-inf projection: pixel xi into [x0i - eps, x0i + eps].
FUSED_HD float linf_clip(float xi, float x0i, float eps) { return fminf(fmaxf(xi, x0i - eps), x0i + eps); }

// The valid pixel range.
FUSED_HD float clamp01(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }

// The L2 projection: a displacement x - x0 of length len > eps shrinks by eps / len (in double, as the twin); the
// pixel then moves to x0i + (xi - x0i) * f.
FUSED_HD float l2_factor(double len, float eps) { return static_cast<float>(eps / len); }
FUSED_HD float l2_pull(float xi, float x0i, float f) { return x0i + (xi - x0i) * f; }

// ---- the phases --------------------------------------------------------------------------------------------------
// The optimizer step: kUpdateLanes lanes per image, pixels u, u+64, ...; coalesced. Entries that stopped are left
// as they are. Without L2 this finishes the pixel; with L2 the moved pixel waits in R2 (over its own gradient) for
// the norm, and each lane leaves its partial sum of squares (double) in kScPS.
FUSED_HD void optimizer_step(int t, const FusedParams& p, const Smem& s, int ni, bool l2) {
  for (int it = t; it < ni * kUpdateLanes; it += kThreads) {
    const int k = it / kUpdateLanes, u = it % kUpdateLanes;
    if (s.misc[kMsStop + k]) continue;
    const int e = s.live_entry()[k];
    const int step = s.misc[kMsStepT + k];
    const size_t row = static_cast<size_t>(e) * kD;
    float* x = p.x + row;
    const float* x0 = p.x0 + row;
    const float eps = p.norm == Norm::None ? 0.0f : ldg(p.eps + e);
    const BiasCorrection bc = bias_correction(p, step);
    float* xn = s.r2(k);
    double sq = 0;
    for (int i = u; i < kD; i += kUpdateLanes) {
      const float gi = xn[i];
      float xi = pixel_step(p, row + i, x[i], gi, bc);
      const float x0i = ldg(x0 + i);
      if (p.norm == Norm::Linf) xi = linf_clip(xi, x0i, eps);
      if (l2) {
        const double d = static_cast<double>(xi - x0i);
        sq += d * d;
        xn[i] = xi;
      } else {
        x[i] = clamp01(xi);
      }
    }
    if (l2) reinterpret_cast<double*>(s.scratch() + kScPS)[k * kUpdateLanes + u] = sq;
    if (u == 0) p.steps_done[e] = step;
  }
}

// L2's second pass: every thread of an image sums the 64 partials in the same order, then scales and clamps its
// pixels.
FUSED_HD void l2_project(int t, const FusedParams& p, const Smem& s, int ni) {
  for (int it = t; it < ni * kUpdateLanes; it += kThreads) {
    const int k = it / kUpdateLanes, u = it % kUpdateLanes;
    if (s.misc[kMsStop + k]) continue;
    const int e = s.live_entry()[k];
    const double* partial = reinterpret_cast<const double*>(s.scratch() + kScPS) + k * kUpdateLanes;
    double total = 0;
    for (int j = 0; j < kUpdateLanes; ++j) total += partial[j];
    const double len = sqrt(total);
    const float eps = ldg(p.eps + e);
    const bool scale = len > eps;
    const float f = scale ? l2_factor(len, eps) : 1.0f;
    const size_t row = static_cast<size_t>(e) * kD;
    const float* xn = s.r2(k);
    for (int i = u; i < kD; i += kUpdateLanes) {
      float xi = xn[i];
      if (scale) {
        const float x0i = ldg(p.x0 + row + i);
        xi = l2_pull(xi, x0i, f);
      }
      p.x[row + i] = clamp01(xi);
    }
  }
}

}  // namespace nudge::cuda::fused
