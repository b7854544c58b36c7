// Softmax losses against a per-image target, CPU reference (the CUDA kernel in kernels/loss.cu is its twin).
// All are computed from logits with log-sum-exp, so logits of +-1e4 give finite losses and gradients.
//   CrossEntropy: -sum_j t_j log p_j                         d/dz = p - t   (sum t = 1)
//   KL:           sum_j t_j (log t_j - log p_j), 0 log 0 = 0  d/dz = p - t   (same gradient, offset by H(t))
//   CarliniWagner (one-hot, class c): max(max_{j!=c} z_j - z_c, -kappa)
// Untargeted entries (true label y) use: CE/KL -> -log(1 - p_y);  CW -> max(z_y - max_{j!=y} z_j, -kappa).
#pragma once
#include <cstdint>

#include "optimize_types.h"

namespace nudge {

// One image: logits[K], target dist[K], kind, cls (one-hot target or true label).
// Writes probs[K] (softmax), dlogits[K] (may be null) and returns the loss.
float loss_forward_backward_one(const float* logits, int K, const float* target, TargetKind kind, int cls,
                                LossKind loss, float kappa, float* probs, float* dlogits);

// KL(t || p) for a soft target, from probabilities; terms with t_j = 0 contribute 0.
float kl_divergence(const float* target, const float* probs, int K);

// Whether an image with probabilities `probs` meets its goal under `cfg` (see StepConfig).
bool goal_met(const float* probs, int K, const float* target, TargetKind kind, int cls, const StepConfig& cfg);

}  // namespace nudge
