// The maths of input optimization, written once for the CPU backend, the layer-by-layer CUDA kernels, the fused
// kernel and the tests: log-sum-exp and softmax, the optimize losses with their logit gradients, the goal tests and
// KL, the robustness attacks' losses, the TRADES training loss, the pixel updates, the projections and the clamps.
// NUDGE_HD makes each function __host__ __device__ under nvcc and plain inline elsewhere, so the device runs the
// very code the CPU tests check.
//
// Numerics: maxima in float, exponential sums, logarithms and log-sum-exps in double (with logits near 1e4 a float
// m + log(s) keeps only ~1e-3 of a loss's precision), probabilities rounded to float once. The GPU's double exp/log
// are within an ulp or two of glibc's and it contracts multiply-adds into FMAs, so device results match the CPU's to
// a few ulps, not always bit for bit. Minima and maxima of pixels go through nudge_fminf/nudge_fmaxf
// (host_device.h), which differ between host and device only for NaN, which never reaches them (non-finite inputs
// are refused at the boundaries).
//
// Optimize losses, against a per-image target (one-hot class c, soft distribution t, or untargeted with label y):
//   CrossEntropy: -sum_j t_j log p_j                          d/dz = p sum(t) - t
//   KL:           CE - H(t), 0 log 0 = 0                      same gradient
//   CarliniWagner one-hot c:  max(max_{j!=c} z_j - z_c, -kappa)   d/dz = +1 at the best other class, -1 at c while
//                             active; untargeted: max(z_y - max_{j!=y} z_j, -kappa)
//   Untargeted CE/KL: -log(1 - p_y) = lse(z) - lse(z without y)   d/dz = p - q, q the softmax without y
// Attack losses (maximised by the attacks except the margin, whose sign says success):
//   CE: lse(z) - z_y;  DLR (Croce & Hein 2020): -(z_y - max_{i!=y} z_i) / (z_p1 - z_p3 + 1e-12);
//   targeted DLR: -(z_y - z_t) / (z_p1 - (z_p3 + z_p4) / 2 + 1e-12);  margin: z_y - max_{i!=y} z_i
//   (z_p1 >= z_p2 >= ... the sorted logits; the DLR losses are invariant to shifting and scaling the logits, which
//   is what makes them robust to gradient masking by scale).
// TRADES (Zhang et al. 2019): L = CE(z, y) + beta KL(p || q), p = softmax(z) of the clean image, q of the attacked:
//   dL/dz_j = (p_j - [j == y]) + beta p_j (log p_j - log q_j - KL),  dL/dza_j = beta (q_j - p_j)
// Pixel updates (t = the 1-based step): Adam m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, x -= lr (m/c1) /
//   (sqrt(v/c2) + eps), c1 = 1 - b1^t, c2 = 1 - b2^t;  SGD x -= lr g;  Sign x -= lr sign(g) (FGSM / PGD).
// Projections: Linf clips each pixel to [x0 - eps, x0 + eps]; L2 scales x - x0 by eps / |x - x0|_2 when the norm
// (summed in double) exceeds eps; then every pixel is clamped to [0, 1], which cannot leave the ball (it only
// shrinks |x - x0| per pixel).
//
// Checked by tests/test_losses.cpp (losses against finite differences), tests/test_input_step.cpp (pixel updates and
// projections), tests/test_attacks.cpp, tests/test_adversarial_training.cpp (TRADES in double) and, through the
// kernels, tests/test_cuda_kernels_loss.cpp, tests/test_cuda_kernels_optimize.cpp and tests/test_cuda_fused_*.cpp.
#pragma once
#include <math.h>

#include "host_device.h"
#include "optimize_types.h"

namespace nudge {

// ---- log-sum-exp, softmax, argmax ----------------------------------------------------------------------------------

// log(sum_j exp(z_j)) over j != skip (skip = -1: all).
NUDGE_HD double log_sum_exp(const float* z, int K, int skip = -1) {
  float m = -INFINITY;
  for (int j = 0; j < K; ++j)
    if (j != skip) m = m < z[j] ? z[j] : m;
  double s = 0;
  for (int j = 0; j < K; ++j)
    if (j != skip) s += exp(static_cast<double>(z[j] - m));
  return static_cast<double>(m) + log(s);
}

// The softmax of z into probs; returns log-sum-exp(z), as log_sum_exp(z, K).
NUDGE_HD double softmax(const float* z, int K, float* probs) {
  float m = -INFINITY;
  for (int j = 0; j < K; ++j) m = m < z[j] ? z[j] : m;
  double s = 0;
  for (int j = 0; j < K; ++j) s += exp(static_cast<double>(z[j] - m));
  for (int j = 0; j < K; ++j) probs[j] = static_cast<float>(exp(static_cast<double>(z[j] - m)) / s);
  return static_cast<double>(m) + log(s);
}

// The first maximum over j != skip (skip = -1: all), as std::max_element.
NUDGE_HD int argmax_except(const float* z, int K, int skip) {
  int best = -1;
  for (int j = 0; j < K; ++j)
    if (j != skip && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

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

// ---- the optimize losses and goals ---------------------------------------------------------------------------------

// One image: logits z[K]; target t[K] (null: one-hot at cls); kind; cls (one-hot target or true label). Writes
// probs[K] (the softmax) and dz[K] (may be null; divided by `divisor`, e.g. a batch size for a mean: exact for 1)
// and returns the loss.
NUDGE_HD float loss_forward_backward_one(const float* z, int K, const float* t, TargetKind kind, int cls,
                                         LossKind loss, float kappa, float* probs, float* dz, float divisor = 1.0f) {
  const double lse = softmax(z, K, probs);
  if (loss == LossKind::CarliniWagner && kind != TargetKind::Soft) {
    // Targeted: push z_c above every other logit; untargeted: push the true class z_y below the best other one.
    const int other = argmax_except(z, K, cls);
    const float margin = kind == TargetKind::OneHot ? z[other] - z[cls] : z[cls] - z[other];
    const bool active = margin > -kappa;
    if (dz) {
      for (int j = 0; j < K; ++j) dz[j] = 0.0f;
      if (active) {
        const float s = kind == TargetKind::OneHot ? 1.0f : -1.0f;
        dz[other] += s / divisor;
        dz[cls] -= s / divisor;
      }
    }
    return active ? margin : -kappa;
  }
  if (kind == TargetKind::Untargeted) {
    // -log(1 - p_y) = lse(all) - lse(j != y); q is recomputed per class rather than stored, so K has no cap.
    float m_o = -INFINITY;
    for (int j = 0; j < K; ++j)
      if (j != cls) m_o = m_o < z[j] ? z[j] : m_o;
    double s_o = 0;
    for (int j = 0; j < K; ++j)
      if (j != cls) s_o += exp(static_cast<double>(z[j] - m_o));
    if (dz)
      for (int j = 0; j < K; ++j)
        dz[j] = (probs[j] - (j == cls ? 0.0f : static_cast<float>(exp(static_cast<double>(z[j] - m_o)) / s_o))) / divisor;
    return static_cast<float>(lse - (static_cast<double>(m_o) + log(s_o)));
  }
  // Cross-entropy and KL share the gradient p sum(t) - t; KL subtracts the target's entropy from the loss.
  double ce = 0, tsum = 0, entropy = 0;
  for (int j = 0; j < K; ++j) {
    const float tj = t ? t[j] : (j == cls ? 1.0f : 0.0f);
    tsum += tj;
    if (tj > 0) {
      ce -= static_cast<double>(tj) * (z[j] - lse);
      entropy -= static_cast<double>(tj) * log(static_cast<double>(tj));
    }
  }
  if (dz)
    for (int j = 0; j < K; ++j) {
      const float tj = t ? t[j] : (j == cls ? 1.0f : 0.0f);
      dz[j] = static_cast<float>(probs[j] * tsum - tj) / divisor;
    }
  return static_cast<float>(loss == LossKind::KL ? ce - entropy : ce);
}

// KL(t || p) for a soft target, from probabilities; terms with t_j = 0 contribute 0, p is floored at 1e-45.
NUDGE_HD float kl_divergence(const float* t, const float* p, int K) {
  double kl = 0;
  for (int j = 0; j < K; ++j)
    if (t[j] > 0) {
      const double pj = static_cast<double>(p[j]) < 1e-45 ? 1e-45 : static_cast<double>(p[j]);
      kl += t[j] * (log(static_cast<double>(t[j])) - log(pj));
    }
  return static_cast<float>(kl);
}

// Whether an image with probabilities p meets its goal: OneHot p[c] >= stop_prob (argmax == c when stop_prob <= 0);
// Untargeted argmax != y (and p[y] <= 1 - stop_prob when stop_prob > 0); Soft KL(t || p) <= stop_kl.
NUDGE_HD bool goal_met(const float* p, int K, const float* t, TargetKind kind, int cls, float stop_prob,
                       float stop_kl) {
  int top = 0;
  for (int j = 1; j < K; ++j)
    if (p[j] > p[top]) top = j;
  switch (kind) {
    case TargetKind::OneHot: return stop_prob > 0 ? p[cls] >= stop_prob : top == cls;
    case TargetKind::Untargeted: return top != cls && (stop_prob <= 0 || p[cls] <= 1.0f - stop_prob);
    case TargetKind::Soft: return kl_divergence(t, p, K) <= stop_kl;
  }
  return false;
}

NUDGE_HD bool goal_met(const float* p, int K, const float* t, TargetKind kind, int cls, const StepConfig& cfg) {
  return goal_met(p, K, t, kind, cls, cfg.stop_prob, cfg.stop_kl);
}

// ---- the robustness attacks' losses (dz may be null) ----------------------------------------------------------------

NUDGE_HD float attack_ce(const float* z, int K, int y, float* dz) {
  const double lse = log_sum_exp(z, K);
  if (dz)
    for (int j = 0; j < K; ++j) dz[j] = static_cast<float>(exp(z[j] - lse) - (j == y ? 1.0 : 0.0));
  return static_cast<float>(lse - z[y]);
}

// Untargeted DLR. K >= 3.
NUDGE_HD float attack_dlr(const float* z, int K, int y, float* dz) {
  int top[4];
  top4_indices(z, K, top);
  const int o = argmax_except(z, K, y);
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

// Targeted DLR toward class t. K >= 4.
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

NUDGE_HD float attack_margin(const float* z, int K, int y) { return z[y] - z[argmax_except(z, K, y)]; }

// ---- the TRADES training loss ----------------------------------------------------------------------------------------

struct TradesTerms {
  double ce = 0, kl = 0;
};

// Writes dz and dza (each [K], scaled by `scale`, e.g. 1/batch for a mean) and returns the two terms unscaled.
NUDGE_HD TradesTerms trades_loss_one(const float* z, const float* za, int K, int y, float beta, float scale, float* dz,
                                     float* dza) {
  const double lse = log_sum_exp(z, K), lsea = log_sum_exp(za, K);
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

// ---- pixel updates, projections, clamps -------------------------------------------------------------------------------

NUDGE_HD float clamp01(float x) { return nudge_fminf(nudge_fmaxf(x, 0.0f), 1.0f); }

NUDGE_HD float linf_clip(float x, float x0, float eps) { return nudge_fminf(nudge_fmaxf(x, x0 - eps), x0 + eps); }

// Adam's bias corrections c1 = 1 - b1^t, c2 = 1 - b2^t for the 1-based step t (1 and 1 for the other optimizers).
struct AdamCorrection {
  float c1 = 1.0f, c2 = 1.0f;
};

NUDGE_HD AdamCorrection adam_correction(InputOptimizer opt, float beta1, float beta2, int t) {
  AdamCorrection c;
  if (opt == InputOptimizer::Adam) {
    c.c1 = 1.0f - powf(beta1, static_cast<float>(t));
    c.c2 = 1.0f - powf(beta2, static_cast<float>(t));
  }
  return c;
}

// The hyper-parameters of a pixel update, as the kernels carry them.
struct PixelStep {
  InputOptimizer optimizer;
  float lr, beta1, beta2, adam_eps;
  AdamCorrection c;
};

NUDGE_HD PixelStep pixel_step(const StepConfig& cfg, int t) {
  return PixelStep{cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps,
                   adam_correction(cfg.optimizer, cfg.beta1, cfg.beta2, t)};
}

// One pixel's optimizer move: x with gradient g; m and v (Adam's moments, read and written) only for Adam.
NUDGE_HD float move_pixel(const PixelStep& s, float x, float g, float* m, float* v) {
  switch (s.optimizer) {
    case InputOptimizer::Adam: {
      const float mi = s.beta1 * *m + (1.0f - s.beta1) * g;
      const float vi = s.beta2 * *v + (1.0f - s.beta2) * g * g;
      *m = mi;
      *v = vi;
      return x - s.lr * (mi / s.c.c1) / (sqrtf(vi / s.c.c2) + s.adam_eps);
    }
    case InputOptimizer::Sgd: return x - s.lr * g;
    case InputOptimizer::Sign: return x - s.lr * static_cast<float>((g > 0) - (g < 0));
  }
  return x;
}

// The L2 projection's factor from the squared distance to x0: whether to scale, and by eps / |x - x0|_2.
struct L2Scale {
  bool scale;
  float f;
};

NUDGE_HD L2Scale l2_scale(double squared_distance, float eps) {
  const double len = sqrt(squared_distance);
  const bool scale = len > eps;
  return L2Scale{scale, scale ? static_cast<float>(eps / len) : 1.0f};
}

NUDGE_HD float l2_scaled(float x, float x0, const L2Scale& s) { return s.scale ? x0 + (x - x0) * s.f : x; }

// ---- whole images (the CPU backend's loops; the kernels parallelise the same per-pixel functions) -------------------

// Projection onto the eps-ball around x0 under `norm`, then the clamp to [0, 1] (used for random starts too).
NUDGE_HD void project_one(float* x, const float* x0, int D, float eps, Norm norm) {
  if (norm == Norm::Linf) {
    for (int i = 0; i < D; ++i) x[i] = linf_clip(x[i], x0[i], eps);
  } else if (norm == Norm::L2) {
    double s = 0;
    for (int i = 0; i < D; ++i) s += static_cast<double>(x[i] - x0[i]) * (x[i] - x0[i]);
    const L2Scale f = l2_scale(s, eps);
    for (int i = 0; i < D; ++i) x[i] = l2_scaled(x[i], x0[i], f);
  }
  for (int i = 0; i < D; ++i) x[i] = clamp01(x[i]);
}

// The optimizer's move alone, without projection (for free variables such as a sigmoid parametrisation).
NUDGE_HD void optimizer_update_one(float* x, const float* g, float* m, float* v, int t, int D, const StepConfig& cfg) {
  const PixelStep s = pixel_step(cfg, t);
  if (cfg.optimizer == InputOptimizer::Adam) {
    for (int i = 0; i < D; ++i) x[i] = move_pixel(s, x[i], g[i], m + i, v + i);
  } else {
    for (int i = 0; i < D; ++i) x[i] = move_pixel(s, x[i], g[i], nullptr, nullptr);
  }
}

// One update of one image's pixels: the move, then the projection onto the eps-ball and the clamp.
NUDGE_HD void input_update_one(float* x, const float* g, float* m, float* v, int t, const float* x0, int D, float eps,
                               const StepConfig& cfg) {
  optimizer_update_one(x, g, m, v, t, D, cfg);
  project_one(x, x0, D, eps, cfg.norm);
}

}  // namespace nudge
