// Square's L2 rows (Andriushchenko et al., ECCV 2020, Section 3.2 and Algorithm 3), written once for the CPU attack
// (host/attack/attack_square_l2.cpp) and the CUDA kernels (kernels/square_l2.cu), as phases over the block executor
// of apgd_rows.h. The perturbation nu = x - x0 is held in double scratch, [H*W] per row (shared memory on the card);
// its sums are lane partials added in lane order, and its products and sums are written so that nvcc cannot contract
// them into FMAs (nudge_dmul, nudge_dadd), so both executors give the same bits. The windows' patterns come
// from a table built on the host (square_l2_pattern_table, attacks.h), laid out by side (square_pattern_offset).
//
// Checked by tests/test_square_run.cpp (lane orders; the loop over the host rows against the CPU attack, bit for bit)
// and tests/test_square_l2.cpp (ball, box and query accounting), and on a GPU by tests/test_cuda_kernels_square.cpp.
#pragma once
#include <math.h>
#include <stdint.h>

#include "apgd_math.h"
#include "apgd_rows.h"
#include "host_device.h"
#include "square_rows.h"

namespace nudge {

// The table of patterns holds, for each side s = 1, 2, ..., its s x s pattern in both orientations, one after the
// other: s's first starts at 2 (1 + 4 + ... + (s-1)^2).
NUDGE_HD long square_pattern_offset(int s) {
  const long t = s - 1;
  return t * (t + 1) * (2 * t + 1) / 3;
}

// Draw indices of one iteration's proposal (its step is the iteration).
enum : uint32_t { kSquareL2Row1 = 0, kSquareL2Col1 = 1, kSquareL2Row2 = 2, kSquareL2Col2 = 3, kSquareL2Sign = 4,
                  kSquareL2Transpose = 5 };

// x = clamp01(x0 + nu * eps / |nu|), x0 itself where nu is all zero. partial: kApgdPartials doubles of scratch.
template <class Block>
NUDGE_HD void square_l2_place(Block& b, double* partial, const double* nu, float eps, const float* x0, float* x,
                              int D) {
  b.phase([&](int lane) {
    double acc = 0;
    for (int q = lane; q < D; q += kRowLanes) acc = nudge_dadd(acc, nudge_dmul(nu[q], nu[q]));
    partial[lane] = acc;
  });
  double* total = partial + 3 * kRowLanes;
  reduce_lanes(b, partial, total, false);
  b.phase([&](int lane) {
    const double f = *total > 0 ? eps / sqrt(*total) : 0.0;
    for (int q = lane; q < D; q += kRowLanes)
      x[q] = clamp01(static_cast<float>(nudge_dadd(x0[q], nudge_dmul(nu[q], f))));
  });
}

// The start: a grid of bumps of side bump = min(H, W) / 5, centred, each of a drawn sign and orientation (draws 2k
// and 2k + 1 of step 0 for bump k in row-major order); zero outside the grid. nu: H*W doubles of scratch.
template <class Block>
NUDGE_HD void square_l2_start_row(Block& b, double* partial, double* nu, const ApgdKey& k, float eps,
                                  const float* x0, float* x, int H, int W, const double* patterns) {
  const int bump = (H < W ? H : W) / 5, nh = H / bump, nw = W / bump;
  const int oh = (H - nh * bump) / 2, ow = (W - nw * bump) / 2;
  const double* pat = patterns + square_pattern_offset(bump);
  b.phase([&](int lane) {
    for (int q = lane; q < H * W; q += kRowLanes) {
      const int h = q / W - oh, w = q % W - ow;
      if (h < 0 || w < 0 || h >= nh * bump || w >= nw * bump) {
        nu[q] = 0.0;
        continue;
      }
      const uint32_t cell = static_cast<uint32_t>((h / bump) * nw + w / bump);
      const double sign = attack_draw(k.seed, k.attack, k.restart, k.point, eps, 0, 2 * cell) < 0.5f ? -1.0 : 1.0;
      const bool transpose = !(attack_draw(k.seed, k.attack, k.restart, k.point, eps, 0, 2 * cell + 1) < 0.5f);
      nu[q] = sign * pat[(transpose ? bump * bump : 0) + (h % bump) * bump + w % bump];
    }
  });
  square_l2_place(b, partial, nu, eps, x0, x, H * W);
}

// Iteration it's candidate (it >= 1) from the best image, windows of side s: W2's mass and the budget still unused,
// eps^2 - |nu|^2, move into W1, whose new content is a drawn-sign pattern plus W1's old content as a unit vector,
// normalised and scaled to sqrt(|nu_{W1 u W2}|^2 + unused); W2 outside W1 is cleared; the whole is placed at norm eps.
template <class Block>
NUDGE_HD void square_l2_propose_row(Block& b, double* partial, double* nu, const ApgdKey& k, float eps, int it, int s,
                                    const float* x0, const float* best, float* cand, int H, int W,
                                    const double* patterns) {
  const uint32_t step = static_cast<uint32_t>(it);
  auto draw = [&](uint32_t j) { return attack_draw(k.seed, k.attack, k.restart, k.point, eps, step, j); };
  const int r1 = square_corner(draw(kSquareL2Row1), H, s), c1 = square_corner(draw(kSquareL2Col1), W, s);
  const int r2 = square_corner(draw(kSquareL2Row2), H, s), c2 = square_corner(draw(kSquareL2Col2), W, s);
  const double sign = draw(kSquareL2Sign) < 0.5f ? -1.0 : 1.0;
  const double* pat = patterns + square_pattern_offset(s) + (draw(kSquareL2Transpose) < 0.5f ? 0 : s * s);
  const int D = H * W, window = s * s;
  double* all2 = partial;
  double* w1_2 = partial + kRowLanes;
  double* union2 = partial + 2 * kRowLanes;
  double* total = partial + 3 * kRowLanes;  // |nu|^2, |nu_W1|^2, |nu_{W1 u W2}|^2; then |fresh|^2 in total[0]
  b.phase([&](int lane) {
    double a = 0, one = 0, both = 0;
    for (int q = lane; q < D; q += kRowLanes) {
      const double v = static_cast<double>(best[q]) - x0[q];
      nu[q] = v;
      const int h = q / W, w = q % W;
      const bool in1 = h >= r1 && h < r1 + s && w >= c1 && w < c1 + s;
      const bool in2 = h >= r2 && h < r2 + s && w >= c2 && w < c2 + s;
      const double v2 = nudge_dmul(v, v);
      a = nudge_dadd(a, v2);
      if (in1) one = nudge_dadd(one, v2);
      if (in1 || in2) both = nudge_dadd(both, v2);
    }
    all2[lane] = a;
    w1_2[lane] = one;
    union2[lane] = both;
  });
  b.phase([&](int lane) {
    if (lane != 0) return;
    double a = 0, one = 0, both = 0;
    for (int i = 0; i < kRowLanes; ++i) {
      a += all2[i];
      one += w1_2[i];
      both += union2[i];
    }
    total[0] = a;
    total[1] = one;
    total[2] = both;
  });
  const double unused = fmax(nudge_dadd(nudge_dmul(eps, eps), -total[0]), 0.0);
  const double available = sqrt(total[2] + unused);
  // 1e-10 keeps an empty window's quotient at zero.
  const double w1_inv = 1.0 / (sqrt(total[1]) + 1e-10);
  // W1's new content in place: each of its pixels from its own old value only.
  b.phase([&](int lane) {
    double acc = 0;
    for (int j = lane; j < window; j += kRowLanes) {
      const int q = (r1 + j / s) * W + c1 + j % s;
      const double v = nudge_dadd(sign * pat[j], nudge_dmul(nu[q], w1_inv));
      nu[q] = v;
      acc = nudge_dadd(acc, nudge_dmul(v, v));
    }
    all2[lane] = acc;
  });
  reduce_lanes(b, all2, total, false);
  const double scale = total[0] > 0 ? available / sqrt(total[0]) : 0.0;
  // W2 outside W1 cleared, W1 scaled: disjoint pixels.
  b.phase([&](int lane) {
    for (int j = lane; j < window; j += kRowLanes) {
      const int h2 = r2 + j / s, w2 = c2 + j % s;
      if (!(h2 >= r1 && h2 < r1 + s && w2 >= c1 && w2 < c1 + s)) nu[h2 * W + w2] = 0.0;
      nu[(r1 + j / s) * W + c1 + j % s] *= scale;
    }
  });
  square_l2_place(b, partial, nu, eps, x0, cand, D);
}

}  // namespace nudge
