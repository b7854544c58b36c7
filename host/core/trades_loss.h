// The TRADES training loss (Zhang et al., ICML 2019) for one example, written once for the CPU backend and the CUDA
// kernel (kernels/trades_loss.cu):
//   L = CE(z, y) + beta * KL(p || q),   p = softmax(z) of the clean image, q = softmax(za) of the attacked one.
// Both passes carry gradient, as in the paper's reference training loss:
//   dL/dz_j  = (p_j - [j == y]) + beta * p_j * (log p_j - log q_j - KL)
//   dL/dza_j = beta * (q_j - p_j)
// (the first from d p_i / d z_j = p_i([i == j] - p_j), whose row sums vanish). Log-probabilities come from
// log-sum-exp in double, so logits of +-1e4 stay finite. Checked by tests/test_adversarial_training.cpp
// (central differences in double).
#pragma once
#include <math.h>

#include "host_device.h"

namespace nudge {

struct TradesTerms {
  double ce = 0, kl = 0;
};

// log(sum_j exp(z_j)) in double.
NUDGE_HD double trades_log_sum_exp(const float* z, int K) {
  float m = z[0];
  for (int j = 1; j < K; ++j) m = z[j] > m ? z[j] : m;
  double s = 0;
  for (int j = 0; j < K; ++j) s += exp(static_cast<double>(z[j]) - m);
  return static_cast<double>(m) + log(s);
}

// Writes dz and dza (each [K], scaled by `scale`, e.g. 1/batch for a mean) and returns the two terms unscaled.
NUDGE_HD TradesTerms trades_loss_one(const float* z, const float* za, int K, int y, float beta, float scale, float* dz,
                                     float* dza) {
  const double lse = trades_log_sum_exp(z, K), lsea = trades_log_sum_exp(za, K);
  TradesTerms t;
  t.ce = lse - z[y];
  for (int j = 0; j < K; ++j) {
    const double lp = z[j] - lse, lq = za[j] - lsea;
    t.kl += exp(lp) * (lp - lq);
  }
  for (int j = 0; j < K; ++j) {
    const double lp = z[j] - lse, lq = za[j] - lsea, p = exp(lp), q = exp(lq);
    dz[j] = static_cast<float>(scale * ((p - (j == y ? 1.0 : 0.0)) + beta * p * (lp - lq - t.kl)));
    dza[j] = static_cast<float>(scale * beta * (q - p));
  }
  return t;
}

}  // namespace nudge
