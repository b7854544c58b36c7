// APGD's per-pixel work on one entry's row, written once as phases over a block executor (host/core/row_lanes.h):
// a thread of the row's block on the device (kernels/apgd.cu), a loop over the lanes on the host, so the CPU run
// executes the very code the GPU does.
//
// Numerics: the step and the projections are those of optimize_math.h (sign step, linf_clip, the L2 scale with its
// norm in double, clamp01). The device contracts multiply-adds into FMAs, so its pixels match the host's to an ulp
// or so; the draws of the start are integer and match exactly.
//
// Checked by tests/test_apgd_run.cpp (forward and reversed lane order give the same bits; the rows against a
// whole-image formulation) and, on a GPU, tests/test_cuda_kernels_apgd.cpp.
#pragma once
#include <math.h>
#include <stdint.h>

#include "apgd_math.h"
#include "host_device.h"
#include "optimize_math.h"
#include "optimize_types.h"
#include "row_lanes.h"

namespace nudge {

// The scratch one row's phases need: three rows of kRowLanes partial sums and their three totals (the L2 step
// keeps all three sums of its row alive at once).
constexpr int kApgdPartials = 3 * kRowLanes + 3;

// Which entry a row's random start belongs to (its draws are keyed by these and the entry's eps).
struct ApgdKey {
  uint64_t seed = 0;
  uint32_t attack = 0;
  int restart = 0;
  uint32_t point = 0;
};

// The random start: t uniform in [-1, 1]^D scaled to norm eps, x = clamp01(x0 + t).
template <class Block>
NUDGE_HD void apgd_start_row(Block& b, double* partial, const ApgdKey& k, float eps, Norm norm, const float* x0,
                             float* x, int D) {
  b.phase([&](int lane) {
    double acc = 0;
    for (int i = lane; i < D; i += kRowLanes) {
      const float t = 2.0f * attack_draw(k.seed, k.attack, k.restart, k.point, eps, 0, static_cast<uint32_t>(i)) - 1.0f;
      x[i] = t;
      acc = norm == Norm::L2 ? acc + static_cast<double>(t) * t : fmax(acc, fabs(static_cast<double>(t)));
    }
    partial[lane] = acc;
  });
  double* total = partial + 3 * kRowLanes;
  reduce_lanes(b, partial, total, norm != Norm::L2);
  b.phase([&](int lane) {
    const double scale = norm == Norm::L2 ? sqrt(*total) : *total;
    const float f = static_cast<float>(eps / fmax(scale, 1e-12));
    for (int i = lane; i < D; i += kRowLanes) x[i] = clamp01(x0[i] + f * x[i]);
  });
}

// One APGD step of a row: z = P(x + eta * dir(g)), x' = P(x + alpha (z - x) + (1 - alpha)(x - x_prev)), with dir
// the sign (Linf) or g / |g|_2 (L2) and P the projection onto the eps-ball and [0, 1]; x_prev becomes x.
template <class Block>
NUDGE_HD void apgd_step_row(Block& b, double* partial, float* x, float* x_prev, const float* g, const float* x0, int D,
                            float eps, float eta, float alpha, Norm norm) {
  if (norm != Norm::L2) {
    b.phase([&](int lane) {
      for (int i = lane; i < D; i += kRowLanes) {
        const float dir = static_cast<float>((g[i] > 0) - (g[i] < 0));
        const float z = clamp01(linf_clip(x[i] + eta * dir, x0[i], eps));
        const float n = apgd_momentum(x[i], z, x_prev[i], alpha);
        x_prev[i] = x[i];
        x[i] = clamp01(linf_clip(n, x0[i], eps));
      }
    });
    return;
  }
  double* g_sq = partial;
  double* z_sq = partial + kRowLanes;
  double* n_sq = partial + 2 * kRowLanes;
  double* total = partial + 3 * kRowLanes;  // |g|^2, |z - x0|^2, |x' - x0|^2
  // z is not stored: each lane recomputes its own pixels' z from x, g and |g| when the ball's scale is known.
  b.phase([&](int lane) {
    double acc = 0;
    for (int i = lane; i < D; i += kRowLanes) acc += static_cast<double>(g[i]) * g[i];
    g_sq[lane] = acc;
  });
  reduce_lanes(b, g_sq, total, false);
  b.phase([&](int lane) {
    const double gn = sqrt(total[0]) + 1e-12;
    double acc = 0;
    for (int i = lane; i < D; i += kRowLanes) {
      const float z = x[i] + eta * static_cast<float>(g[i] / gn);
      acc += static_cast<double>(z - x0[i]) * (z - x0[i]);
    }
    z_sq[lane] = acc;
  });
  reduce_lanes(b, z_sq, total + 1, false);
  b.phase([&](int lane) {
    const double gn = sqrt(total[0]) + 1e-12;
    const L2Scale fz = l2_scale(total[1], eps);
    double acc = 0;
    for (int i = lane; i < D; i += kRowLanes) {
      const float z = clamp01(l2_scaled(x[i] + eta * static_cast<float>(g[i] / gn), x0[i], fz));
      const float n = apgd_momentum(x[i], z, x_prev[i], alpha);
      x_prev[i] = x[i];
      x[i] = n;
      acc += static_cast<double>(n - x0[i]) * (n - x0[i]);
    }
    n_sq[lane] = acc;
  });
  reduce_lanes(b, n_sq, total + 2, false);
  b.phase([&](int lane) {
    const L2Scale fx = l2_scale(total[2], eps);
    for (int i = lane; i < D; i += kRowLanes) x[i] = clamp01(l2_scaled(x[i], x0[i], fx));
  });
}

// Where one row's tracking reads and writes: the entry's state and pixels, and the row's evaluation.
struct ApgdTrackRow {
  ApgdEntry* entry;     // read, then rewritten in the last phase
  float loss;           // of the evaluated iterate
  bool misclassified;
  float eps;
  float* x;             // the evaluated iterate; the next step's start after a halving
  const float* g_eval;  // its input gradient
  float* g_next;        // the gradient the next step uses
  float* x_best;
  float* g_best;
  float* adv;           // the adversarial example, written when the entry breaks
  uint8_t* keep;        // !done after tracking
};

// The bookkeeping of apgd_track_entry applied to the row's pixels. Every lane computes the same decision from the
// state it read before the first barrier; lane 0 writes the new state after it.
template <class Block>
NUDGE_HD void apgd_track_row(Block& b, const ApgdTrackRow& r, const ApgdTrackStep& t, int D) {
  const ApgdEntry before = *r.entry;
  ApgdMoves mv;
  const ApgdEntry next = apgd_track_entry(before, r.loss, r.misclassified, r.eps, t, &mv);
  b.phase([&](int lane) {
    if (before.done) return;
    for (int i = lane; i < D; i += kRowLanes) {
      if (mv.broken) {
        r.adv[i] = r.x[i];
        continue;
      }
      float g = r.g_eval[i];
      if (mv.keep_best) {
        r.x_best[i] = r.x[i];
        r.g_best[i] = g;
      }
      if (mv.go_best) {
        r.x[i] = r.x_best[i];
        g = r.g_best[i];
      }
      r.g_next[i] = g;
    }
  });
  b.phase([&](int lane) {
    if (lane != 0) return;
    *r.entry = next;
    *r.keep = next.done ? 0 : 1;
  });
}

}  // namespace nudge
