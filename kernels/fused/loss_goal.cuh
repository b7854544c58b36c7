// The fused kernel's loss, goal test and best-iterate bookkeeping (kernels/fused/fused_optimize.cu).
//
// The maths here (max_and_sum, argmax_except, loss_row, goal_met) are device twins of loss_forward_backward_one and
// goal_met in host/losses.cpp, written again for K = 10 with the same operations in the same order (double
// exp/log/sum where the CPU uses double). Their only caller is track_image, the bookkeeping phase, which reads the
// logits and writes probs, dz and the per-image flags; a shared host+device header of those maths can replace the
// four functions without touching the phase.
#pragma once
#include <cmath>

#include "layout.cuh"

namespace nudge::cuda::fused {

// ---- loss and goal: the twins of loss_forward_backward_one and goal_met (host/losses.cpp), K = 10 -----------------
FUSED_HD void max_and_sum(const float* z, int skip, float* m_out, double* s_out) {
  float m = -INFINITY;
  for (int j = 0; j < kK; ++j)
    if (j != skip) m = m < z[j] ? z[j] : m;
  double s = 0;
  for (int j = 0; j < kK; ++j)
    if (j != skip) s += exp(static_cast<double>(z[j] - m));
  *m_out = m;
  *s_out = s;
}

FUSED_HD int argmax_except(const float* z, int skip) {
  int best = -1;
  for (int j = 0; j < kK; ++j)
    if (j != skip && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

// Writes probs and dz, returns the loss. t: the entry's target distribution (global memory, read-only).
FUSED_HD float loss_row(const float* z, const float* t, TargetKind kind, int cls, LossKind loss, float kappa,
                        float* probs, float* dz) {
  float m;
  double s;
  max_and_sum(z, -1, &m, &s);
  for (int j = 0; j < kK; ++j) probs[j] = static_cast<float>(exp(static_cast<double>(z[j] - m)) / s);
  // The log-sum-exp in double, as the twin (losses.cpp log_sum_exp). In float, m + log(s) keeps only ~6e-8 of |lse|
  // (1e-3 at logits of 1e4), so small losses (CE near p = 1, untargeted lse - lse_other) would lose most of their
  // digits and the best-iterate comparison loss < best_loss could differ from the CPU's.
  const double lse = static_cast<double>(m) + log(s);
  if (loss == LossKind::CarliniWagner && kind != TargetKind::Soft) {
    const int other = argmax_except(z, cls);
    const float margin = kind == TargetKind::OneHot ? z[other] - z[cls] : z[cls] - z[other];
    const bool active = margin > -kappa;
    for (int j = 0; j < kK; ++j) dz[j] = 0.0f;
    if (active) {
      const float sg = kind == TargetKind::OneHot ? 1.0f : -1.0f;
      dz[other] += sg;
      dz[cls] -= sg;
    }
    return active ? margin : -kappa;
  }
  if (kind == TargetKind::Untargeted) {
    float m_o;
    double s_o;
    max_and_sum(z, cls, &m_o, &s_o);
    const double lse_other = static_cast<double>(m_o) + log(s_o);  // double, as the twin (see lse above)
    for (int j = 0; j < kK; ++j) {
      const float q = j == cls ? 0.0f : static_cast<float>(exp(static_cast<double>(z[j] - m_o)) / s_o);
      dz[j] = probs[j] - q;
    }
    return static_cast<float>(lse - lse_other);
  }
  double ce = 0, tsum = 0, entropy = 0;
  for (int j = 0; j < kK; ++j) {
    const float tj = ldg(t + j);
    tsum += tj;
    if (tj > 0) {
      ce -= static_cast<double>(tj) * (z[j] - lse);
      entropy -= static_cast<double>(tj) * log(static_cast<double>(tj));
    }
  }
  for (int j = 0; j < kK; ++j) dz[j] = static_cast<float>(probs[j] * tsum - ldg(t + j));
  return static_cast<float>(loss == LossKind::KL ? ce - entropy : ce);
}

FUSED_HD bool goal_met(const float* p, const float* t, TargetKind kind, int cls, float stop_prob, float stop_kl) {
  int top = 0;
  for (int j = 1; j < kK; ++j)
    if (p[j] > p[top]) top = j;
  switch (kind) {
    case TargetKind::OneHot: return stop_prob > 0 ? p[cls] >= stop_prob : top == cls;
    case TargetKind::Untargeted: return top != cls && (stop_prob <= 0 || p[cls] <= 1.0f - stop_prob);
    case TargetKind::Soft: {
      double kl = 0;
      for (int j = 0; j < kK; ++j) {
        const float tj = ldg(t + j);
        if (tj > 0) kl += tj * (log(static_cast<double>(tj)) - log(fmax(static_cast<double>(p[j]), 1e-45)));
      }
      return static_cast<float>(kl) <= stop_kl;
    }
  }
  return false;
}

// ---- the bookkeeping phase -----------------------------------------------------------------------------------------
// Loss, goal and best iterate: one thread per image (the CPU twin's order of operations, in double where it is).
// Reads the logits (kScZ); writes probs (kScPR), dz (kScDZ), the entry's best-* state and the image's misc flags
// (improved, stop, the update's step count) that the backward and the update read.
FUSED_HD void track_image(int t, const FusedParams& p, const Smem& s, int ni) {
  if (t >= ni) return;
  float* scratch = s.scratch();
  const int e = s.live_entry()[t];
  const float* tgt = p.target_dist + static_cast<size_t>(e) * kK;
  const TargetKind kind = static_cast<TargetKind>(ldg(p.target_kind + e));
  const int cls = ldg(p.target_class + e);
  // probs and dz in shared memory: the loss indexes them by class, which would put register arrays on the stack.
  float* probs = scratch + kScPR + t * kLogitPitch;
  const float loss = loss_row(scratch + kScZ + t * kLogitPitch, tgt, kind, cls, p.loss, p.kappa, probs,
                              scratch + kScDZ + t * kLogitPitch);
  const bool met = goal_met(probs, tgt, kind, cls, p.stop_prob, p.stop_kl);
  const int steps = p.steps_done[e];
  if (p.start_class && steps == 0) {
    // The first iterate's class, for the report's "classified before" column: no second network pass for it.
    int best = 0;
    for (int j = 1; j < kK; ++j)
      if (probs[j] > probs[best]) best = j;
    p.start_class[e] = best;
  }
  const bool improved = !p.goal_reached[e] && (met || loss < p.best_loss[e]);
  if (improved) {
    p.best_loss[e] = loss;
    for (int j = 0; j < kK; ++j) p.best_probs[static_cast<size_t>(e) * kK + j] = probs[j];
    if (met) {
      p.goal_reached[e] = 1;
      p.success_step[e] = steps;
    }
  }
  const bool stop = met && p.early_stop;
  if (stop) s.misc[kMsLive + s.misc[kMsLiveSlot + t]] = 0;
  s.misc[kMsImproved + t] = improved ? 1 : 0;
  s.misc[kMsStop + t] = stop ? 1 : 0;
  s.misc[kMsStepT + t] = steps + 1;
}

}  // namespace nudge::cuda::fused
