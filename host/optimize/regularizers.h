// Image priors for class visualisation (Simonyan et al. 2013; Yosinski et al. 2015; Olah et al. 2017): penalties
// whose gradients are added to the model's, and transformations applied between steps. One H x W image per call.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "pca_basis.h"

namespace nudge {

struct RegularizerConfig {
  float tv = 0;              // weight of total variation
  bool tv_isotropic = false; // sum sqrt(dx^2 + dy^2) instead of sum |dx| + |dy|
  float l2 = 0;              // weight of 0.5 * ||x - l2_center||^2
  float l2_center = 0.5f;    // decay toward mid-gray (0.5) or black (0)
  float l1 = 0;              // weight of ||x - l2_center||_1: decay toward the same center that does not favour
                             // spreading intensity into faint areas as L2 does (MNIST strokes are saturated)
  int blur_every = 0;        // Gaussian blur after every k-th update (0: never)
  float blur_sigma = 1.0f;   // sigma of the first blur ...
  float blur_decay = 1.0f;   // ... multiplied by this at each later blur
  int jitter = 0;            // each step, the model sees the image shifted by up to +-jitter pixels
  bool sigmoid = false;      // pixels = sigmoid(w), w optimized freely, instead of clamping to [0,1]
  // Iterates before this many updates never count as meeting the goal: the priors need steps to shape an image, and
  // the first iterate that crosses the confidence bar is otherwise kept (and, with early stop, frozen) half-formed.
  int settle_steps = 0;
  // The confidence phase: from update settle_steps on, the TV, L2 and L1 weights are multiplied by prior_decay at every
  // update (weight at update t = weight * prior_decay^max(0, t - settle_steps)), so that the model's gradient, which
  // shrinks as its confidence nears 1, is no longer held back by priors that already shaped the image. 1: constant.
  float prior_decay = 1.0f;
  // The data-manifold parametrisation (pca_basis.h): with a basis, each image is mean + V^T c clamped to [0,1] and its
  // coefficients c are what the optimizer moves. Both penalties below are measured in the basis' own units (divided
  // by each component's variance) and fade with prior_decay like the TV, L2 and L1 weights.
  std::string pca_path;                 // --pca FILE, as given (the job spec names it and its digest)
  std::shared_ptr<const PcaBasis> pca;  // read from pca_path before the job runs (load_pca_prior)
  float pca_prior = 0;                  // weight of 0.5 sum_j c_j^2 / var_j: the Gaussian's negative log-density
  // Weight of 0.5 sum_j (c_j - s_j)^2 / var_j, s = the start image's coefficients. Random starts differ, so this
  // keeps the prototypes of one class as far apart as their starts instead of letting all of them fall into the
  // class's one easiest mode.
  float pca_anchor = 0;

  bool any() const {
    return tv > 0 || l2 > 0 || l1 > 0 || blur_every > 0 || jitter > 0 || sigmoid || settle_steps > 0 || pca;
  }
};

// The factor on the TV, L2 and L1 weights for the update that follows `updates` earlier ones.
float prior_scale(const RegularizerConfig& reg, int updates);

// Each returns the penalty's value times `weight` and adds weight * its gradient into `grad` (may be null).
// Anisotropic TV: sum over neighbours of |x_a - x_b|, with sign(0) = 0.
float tv_anisotropic(const float* x, int H, int W, float weight, float* grad);
// Isotropic TV: sum over pixels of sqrt(dx^2 + dy^2 + 1e-8) with forward differences (last row/column: 0).
float tv_isotropic(const float* x, int H, int W, float weight, float* grad);
float l2_decay(const float* x, int D, float center, float weight, float* grad);
// sum |x - center|, with sign(0) = 0.
float l1_decay(const float* x, int D, float center, float weight, float* grad);
// 0.5 * sum_j (c_j - center_j)^2 / variance_j over k coefficients (center null: 0), its gradient added as the others.
float scaled_l2_decay(const float* c, const float* center, const float* variance, int k, float weight, float* grad);

// Separable Gaussian blur (radius ceil(3 sigma), edge pixels repeated); in and out must differ.
void gaussian_blur(const float* in, int H, int W, float sigma, float* out);

// out[i][j] = in[i - dy][j - dx], zero where that falls outside (MNIST's background is black).
void shift_image(const float* in, int H, int W, int dy, int dx, float* out);
// The adjoint of shift_image, for carrying a gradient back to the unshifted image.
void unshift_gradient(const float* grad_shifted, int H, int W, int dy, int dx, float* grad);

// The shift for (seed, entry, step): each of dy, dx uniform in [-s, s], from the counter generator, so an entry's
// jitter does not depend on chunking or threads.
void jitter_offsets(uint64_t seed, uint64_t entry, int step, int s, int* dy, int* dx);

}  // namespace nudge
