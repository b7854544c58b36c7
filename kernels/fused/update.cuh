// The fused kernel's optimizer step and projection (kernels/fused/fused_optimize.cu): the threads-to-pixels mapping
// of input_update_one, with its per-pixel maths (move_pixel, linf_clip, l2_scale, l2_scaled, clamp01) from the
// shared host/core/optimize_math.h.
#pragma once
#include <cmath>

#include "layout.cuh"
#include "optimize_math.h"

namespace nudge::cuda::fused {

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
    const PixelStep st{p.optimizer, p.lr, p.beta1, p.beta2, p.adam_eps,
                       adam_correction(p.optimizer, p.beta1, p.beta2, step)};
    const bool adam = p.optimizer == InputOptimizer::Adam;
    float* xn = s.r2(k);
    double sq = 0;
    for (int i = u; i < kD; i += kUpdateLanes) {
      const float gi = xn[i];
      float xi = move_pixel(st, x[i], gi, adam ? p.m + row + i : nullptr, adam ? p.v + row + i : nullptr);
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
    const L2Scale f = l2_scale(total, ldg(p.eps + e));
    const size_t row = static_cast<size_t>(e) * kD;
    const float* xn = s.r2(k);
    for (int i = u; i < kD; i += kUpdateLanes) {
      float xi = xn[i];
      if (f.scale) xi = l2_scaled(xi, ldg(p.x0 + row + i), f);
      p.x[row + i] = clamp01(xi);
    }
  }
}

}  // namespace nudge::cuda::fused
