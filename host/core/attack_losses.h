// The losses of the robustness attacks, from logits, with their gradients, written once for every backend (plain
// inline here; NUDGE_HD so a device kernel can call them too). All are maximised by the attacks except the margin,
// whose sign says success. Checked against central differences by tests/test_attacks.cpp.
//   CE:            lse(z) - z_y                                       d/dz = softmax(z) - e_y
//   DLR (Croce & Hein 2020, untargeted):  -(z_y - max_{i!=y} z_i) / (z_p1 - z_p3 + 1e-12)
//   targeted DLR:  -(z_y - z_t) / (z_p1 - (z_p3 + z_p4) / 2 + 1e-12)
//   margin:        z_y - max_{i!=y} z_i   (untargeted success when < 0; Square's loss, minimised)
// where z_p1 >= z_p2 >= ... are the sorted logits. The DLR losses are invariant to shifting and scaling the logits,
// which is what makes them robust to gradient masking by scale.
#pragma once
#include <math.h>

#include "host_device.h"

namespace nudge {

// The indices of the four largest logits, largest first (ties: the lower index first). K >= 4.
NUDGE_HD void top4_indices(const float* z, int K, int* top) {
  for (int r = 0; r < 4; ++r) top[r] = -1;
  for (int j = 0; j < K; ++j) {
    int r = 4;
    while (r > 0 && (top[r - 1] < 0 || z[j] > z[top[r - 1]])) --r;
    if (r >= 4) continue;
    for (int q = 3; q > r; --q) top[q] = top[q - 1];
    top[r] = j;
  }
}

NUDGE_HD int argmax_other(const float* z, int K, int skip) {
  int best = -1;
  for (int j = 0; j < K; ++j)
    if (j != skip && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

// Cross-entropy to the label; dz may be null.
NUDGE_HD float attack_ce(const float* z, int K, int y, float* dz) {
  float m = z[0];
  for (int j = 1; j < K; ++j) m = z[j] > m ? z[j] : m;
  double s = 0;
  for (int j = 0; j < K; ++j) s += exp(static_cast<double>(z[j]) - m);
  const double lse = m + log(s);
  if (dz)
    for (int j = 0; j < K; ++j) dz[j] = static_cast<float>(exp(z[j] - lse) - (j == y ? 1.0 : 0.0));
  return static_cast<float>(lse - z[y]);
}

// Untargeted DLR; dz may be null. K >= 3.
NUDGE_HD float attack_dlr(const float* z, int K, int y, float* dz) {
  int top[4];
  top4_indices(z, K, top);
  const int o = argmax_other(z, K, y);
  const double d = static_cast<double>(z[top[0]]) - z[top[2]] + 1e-12;
  const double u = static_cast<double>(z[y]) - z[o];
  if (dz) {
    for (int j = 0; j < K; ++j) dz[j] = 0.0f;
    dz[y] += static_cast<float>(-1.0 / d);
    dz[o] += static_cast<float>(1.0 / d);
    dz[top[0]] += static_cast<float>(u / (d * d));
    dz[top[2]] -= static_cast<float>(u / (d * d));
  }
  return static_cast<float>(-u / d);
}

// Targeted DLR toward class t; dz may be null. K >= 4.
NUDGE_HD float attack_dlr_targeted(const float* z, int K, int y, int t, float* dz) {
  int top[4];
  top4_indices(z, K, top);
  const double d = static_cast<double>(z[top[0]]) - 0.5 * (static_cast<double>(z[top[2]]) + z[top[3]]) + 1e-12;
  const double u = static_cast<double>(z[y]) - z[t];
  if (dz) {
    for (int j = 0; j < K; ++j) dz[j] = 0.0f;
    dz[y] += static_cast<float>(-1.0 / d);
    dz[t] += static_cast<float>(1.0 / d);
    dz[top[0]] += static_cast<float>(u / (d * d));
    dz[top[2]] -= static_cast<float>(0.5 * u / (d * d));
    dz[top[3]] -= static_cast<float>(0.5 * u / (d * d));
  }
  return static_cast<float>(-u / d);
}

NUDGE_HD float attack_margin(const float* z, int K, int y) { return z[y] - z[argmax_other(z, K, y)]; }

}  // namespace nudge
