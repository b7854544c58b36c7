// Square's L-inf rows (Andriushchenko et al., ECCV 2020), written once for the CPU attack
// (host/attack/attack_square.cpp) and the CUDA kernels (kernels/square.cu), as phases over the block executor of
// apgd_rows.h: the start of vertical stripes of +-eps, the candidate that sets one square window of the best image
// to x0 +- eps, and the acceptance of a candidate whose margin z_y - max_{i != y} z_i fell. Every draw is the
// entry's own, keyed by (seed, Square, restart, point, eps, iteration, j): the key's `attack` is AttackId::Square.
//
// Checked by tests/test_square_run.cpp (lane orders; the loop over the host rows against the CPU attack, bit for bit)
// and, on a GPU, tests/test_cuda_kernels_square.cpp.
#pragma once
#include <stdint.h>

#include "apgd_math.h"
#include "apgd_rows.h"
#include "host_device.h"
#include "optimize_math.h"

namespace nudge {

// A window corner from a uniform u in [0,1): one of 0 .. extent - s - 1, as AutoAttack draws it (the Square paper
// writes 0 .. extent - s). Never touching the last row or column is measured stronger on MNIST, whose border is
// black in every digit: a window there spends its change on pixels the box clips (docs/robustness.md).
NUDGE_HD int square_corner(float u, int extent, int s) {
  const int positions = extent - s;
  const int c = static_cast<int>(u * static_cast<float>(positions));
  return c < positions - 1 ? c : positions - 1;
}

// The start: column w of the image is x0 + eps or x0 - eps (draw w of step 0), clamped to [0, 1]. H x W pixels.
template <class Block>
NUDGE_HD void square_linf_start_row(Block& b, const ApgdKey& k, float eps, const float* x0, float* x, int H, int W) {
  b.phase([&](int lane) {
    for (int q = lane; q < H * W; q += kRowLanes) {
      const int w = q % W;
      const float s = attack_draw(k.seed, k.attack, k.restart, k.point, eps, 0, static_cast<uint32_t>(w)) < 0.5f
                          ? -eps
                          : eps;
      x[q] = clamp01(x0[q] + s);
    }
  });
}

// Iteration it's candidate (it >= 1) from the best image: a copy with the s x s window at a drawn corner set to
// clamp01(x0 + sign eps), the sign drawn, and flipped once when that would change no pixel (a query that changes
// nothing is wasted; one channel leaves only the other sign). `flags` is kRowLanes + 1 ints of scratch.
template <class Block>
NUDGE_HD void square_linf_propose_row(Block& b, int* flags, const ApgdKey& k, float eps, int it, int s,
                                      const float* x0, const float* best, float* cand, int H, int W) {
  const uint32_t step = static_cast<uint32_t>(it);
  const int vh = square_corner(attack_draw(k.seed, k.attack, k.restart, k.point, eps, step, 0), H, s);
  const int vw = square_corner(attack_draw(k.seed, k.attack, k.restart, k.point, eps, step, 1), W, s);
  const float sign = attack_draw(k.seed, k.attack, k.restart, k.point, eps, step, 2) < 0.5f ? -1.0f : 1.0f;
  const int D = H * W, window = s * s;
  b.phase([&](int lane) {
    for (int q = lane; q < D; q += kRowLanes) cand[q] = best[q];
  });
  // The window's pixels, by lane: partials of "changed a pixel", then lane 0's OR in flags[kRowLanes].
  b.phase([&](int lane) {
    int changed = 0;
    for (int j = lane; j < window; j += kRowLanes) {
      const int q = (vh + j / s) * W + vw + j % s;
      cand[q] = clamp01(x0[q] + sign * eps);
      changed |= cand[q] != best[q];
    }
    flags[lane] = changed;
  });
  b.phase([&](int lane) {
    if (lane != 0) return;
    int any = 0;
    for (int i = 0; i < kRowLanes; ++i) any |= flags[i];
    flags[kRowLanes] = any;
  });
  b.phase([&](int lane) {
    if (flags[kRowLanes]) return;
    for (int j = lane; j < window; j += kRowLanes) {
      const int q = (vh + j / s) * W + vw + j % s;
      cand[q] = clamp01(x0[q] - sign * eps);
    }
  });
}

// One entry's search state.
struct SquareEntry {
  float margin;  // of the best image
  int32_t done;  // broken: its best image is the adversarial example
  int32_t broken_step;
  int32_t pad;
};

// The decision after a candidate of margin `margin` at iteration it (0: the start itself, always taken).
NUDGE_HD SquareEntry square_accept_entry(SquareEntry s, float margin, int it, bool* take) {
  *take = false;
  if (s.done) return s;
  if (it == 0 || margin < s.margin) {
    s.margin = margin;
    *take = true;
  }
  if (s.margin < 0) {
    s.done = 1;
    s.broken_step = it;
  }
  return s;
}

// The acceptance on a row: the candidate becomes the best image when its margin fell. Every lane decides from the
// state it read before the first barrier; lane 0 writes the new state and the keep flag after it.
template <class Block>
NUDGE_HD void square_accept_row(Block& b, SquareEntry* entry, float margin, int it, const float* cand, float* best,
                                int D, uint8_t* keep) {
  bool take = false;
  const SquareEntry next = square_accept_entry(*entry, margin, it, &take);
  b.phase([&](int lane) {
    if (!take || it == 0) return;  // at the start the candidate is the best image itself
    for (int q = lane; q < D; q += kRowLanes) best[q] = cand[q];
  });
  b.phase([&](int lane) {
    if (lane != 0) return;
    *entry = next;
    *keep = next.done ? 0 : 1;
  });
}

}  // namespace nudge
