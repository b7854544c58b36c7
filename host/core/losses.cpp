#include "losses.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nudge {

namespace {

// log(sum_j exp(z_j)) over j != skip (skip = -1: all), and the softmax q over the same set into q (may be null).
// Returned in double: with logits near 1e4 a float sum m + log(s) keeps only ~1e-3 of the loss's precision.
double log_sum_exp(const float* z, int K, int skip, float* q) {
  float m = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < K; ++j)
    if (j != skip) m = std::max(m, z[j]);
  double s = 0;
  for (int j = 0; j < K; ++j)
    if (j != skip) s += std::exp(static_cast<double>(z[j] - m));
  if (q)
    for (int j = 0; j < K; ++j) q[j] = j == skip ? 0.0f : static_cast<float>(std::exp(static_cast<double>(z[j] - m)) / s);
  return static_cast<double>(m) + std::log(s);
}

int argmax_except(const float* z, int K, int skip) {
  int best = -1;
  for (int j = 0; j < K; ++j)
    if (j != skip && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

}  // namespace

float loss_forward_backward_one(const float* z, int K, const float* t, TargetKind kind, int cls, LossKind loss,
                                float kappa, float* probs, float* dz) {
  const double lse = log_sum_exp(z, K, -1, probs);
  if (loss == LossKind::CarliniWagner && kind != TargetKind::Soft) {
    // Targeted: push z_c above every other logit; untargeted: push the true class z_y below the best other one.
    const int other = argmax_except(z, K, cls);
    const float margin = kind == TargetKind::OneHot ? z[other] - z[cls] : z[cls] - z[other];
    const bool active = margin > -kappa;
    if (dz) {
      std::fill(dz, dz + K, 0.0f);
      if (active) {
        const float s = kind == TargetKind::OneHot ? 1.0f : -1.0f;
        dz[other] += s;
        dz[cls] -= s;
      }
    }
    return active ? margin : -kappa;
  }
  if (kind == TargetKind::Untargeted) {
    // -log(1 - p_y) = lse(all) - lse(j != y); gradient p - q with q the softmax over j != y.
    float q[64];
    float* qq = K <= 64 ? q : nullptr;
    const double lse_other = log_sum_exp(z, K, cls, qq);
    if (dz) {
      if (qq) {
        for (int j = 0; j < K; ++j) dz[j] = probs[j] - qq[j];
      } else {
        // More than 64 classes: recompute q element by element.
        for (int j = 0; j < K; ++j) dz[j] = probs[j] - (j == cls ? 0.0f : static_cast<float>(std::exp(z[j] - lse_other)));
      }
    }
    return static_cast<float>(lse - lse_other);
  }
  // Cross-entropy and KL share the gradient (p * sum t) - t; KL subtracts the target's entropy from the loss.
  double ce = 0, tsum = 0, entropy = 0;
  for (int j = 0; j < K; ++j) {
    tsum += t[j];
    if (t[j] > 0) {
      ce -= static_cast<double>(t[j]) * (z[j] - lse);
      entropy -= static_cast<double>(t[j]) * std::log(static_cast<double>(t[j]));
    }
  }
  if (dz)
    for (int j = 0; j < K; ++j) dz[j] = static_cast<float>(probs[j] * tsum - t[j]);
  return static_cast<float>(loss == LossKind::KL ? ce - entropy : ce);
}

float kl_divergence(const float* t, const float* p, int K) {
  double kl = 0;
  for (int j = 0; j < K; ++j)
    if (t[j] > 0) kl += t[j] * (std::log(static_cast<double>(t[j])) - std::log(std::max(static_cast<double>(p[j]), 1e-45)));
  return static_cast<float>(kl);
}

bool goal_met(const float* p, int K, const float* t, TargetKind kind, int cls, const StepConfig& cfg) {
  int top = 0;
  for (int j = 1; j < K; ++j)
    if (p[j] > p[top]) top = j;
  switch (kind) {
    case TargetKind::OneHot: return cfg.stop_prob > 0 ? p[cls] >= cfg.stop_prob : top == cls;
    case TargetKind::Untargeted: return top != cls && (cfg.stop_prob <= 0 || p[cls] <= 1.0f - cfg.stop_prob);
    case TargetKind::Soft: return kl_divergence(t, p, K) <= cfg.stop_kl;
  }
  return false;
}

}  // namespace nudge
