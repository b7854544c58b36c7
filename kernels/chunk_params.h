// The per-entry arrays of an optimize chunk and the kernel parameter structs built from them and the step
// configuration: the one place where StepConfig's fields meet the kernels' parameters. Both GPU chunk
// implementations (host/cuda/cuda_optimize_chunk.cpp, layer by layer; host/cuda/fused_chunk.cpp, the fused kernel)
// and the fused kernel's host-emulation tests fill their launches through these functions.
#pragma once
#include <cstdint>

#include "fused_optimize.cuh"
#include "input_step.cuh"
#include "optimize_track.cuh"
#include "optimize_types.h"
#include "softmax_loss.cuh"

namespace nudge::cuda {

// Indexed by entry: [entries, D], [entries, K] or [entries]. Device pointers, or host pointers for the emulation.
struct ChunkArrays {
  float* x = nullptr;                    // iterates, updated in place
  const float* x0 = nullptr;             // centres of the eps-balls (the start images)
  float* m = nullptr;                    // Adam's moments (Adam only)
  float* v = nullptr;
  const float* target_dist = nullptr;
  const int32_t* target_kind = nullptr;  // TargetKind
  const int32_t* target_class = nullptr;
  const float* eps = nullptr;            // radii
  int32_t* steps_done = nullptr;
  uint8_t* goal_reached = nullptr;
  float* best_loss = nullptr;
  float* best_probs = nullptr;
  float* best_images = nullptr;
  int32_t* success_step = nullptr;
  int32_t* start_class = nullptr;        // or null
};

// The fused kernel's parameters but for the launch's own: rows, count, tile, steps, final_eval and keep.
inline FusedParams fused_params(const ChunkArrays& a, const StepConfig& cfg, const float* packed_weights) {
  FusedParams p;
  p.weights = packed_weights;
  p.x = a.x;
  p.x0 = a.x0;
  p.m = a.m;
  p.v = a.v;
  p.target_dist = a.target_dist;
  p.target_kind = a.target_kind;
  p.target_class = a.target_class;
  p.eps = a.eps;
  p.steps_done = a.steps_done;
  p.goal_reached = a.goal_reached;
  p.best_loss = a.best_loss;
  p.best_probs = a.best_probs;
  p.best_images = a.best_images;
  p.success_step = a.success_step;
  p.start_class = a.start_class;
  p.loss = cfg.loss;
  p.optimizer = cfg.optimizer;
  p.norm = cfg.norm;
  p.lr = cfg.lr;
  p.beta1 = cfg.beta1;
  p.beta2 = cfg.beta2;
  p.adam_eps = cfg.adam_eps;
  p.kappa = cfg.cw_kappa;
  p.stop_prob = cfg.stop_prob;
  p.stop_kl = cfg.stop_kl;
  p.early_stop = cfg.early_stop;
  return p;
}

// The layer-by-layer step's three kernels for `rows` active rows, row i evaluating entry entry[i].

inline SoftmaxLossParams chunk_loss_params(const ChunkArrays& a, const StepConfig& cfg, const int32_t* entry, int rows,
                                           int K, const float* logits, float* probs, float* loss, float* dlogits) {
  SoftmaxLossParams p;
  p.logits = logits;
  p.rows = rows;
  p.K = K;
  p.entry = entry;
  p.target_dist = a.target_dist;
  p.target_kind = a.target_kind;
  p.target_class = a.target_class;
  p.loss = cfg.loss;
  p.kappa = cfg.cw_kappa;
  p.probs = probs;
  p.loss_out = loss;
  p.dlogits = dlogits;
  return p;
}

inline TrackParams chunk_track_params(const ChunkArrays& a, const StepConfig& cfg, const int32_t* entry, int rows,
                                      int K, int D, const float* probs, const float* loss, uint8_t* keep) {
  TrackParams p;
  p.rows = rows;
  p.K = K;
  p.D = D;
  p.entry = entry;
  p.probs = probs;
  p.loss = loss;
  p.x = a.x;
  p.target_dist = a.target_dist;
  p.target_kind = a.target_kind;
  p.target_class = a.target_class;
  p.steps_done = a.steps_done;
  p.stop_prob = cfg.stop_prob;
  p.stop_kl = cfg.stop_kl;
  p.early_stop = cfg.early_stop;
  p.goal_reached = a.goal_reached;
  p.best_loss = a.best_loss;
  p.best_probs = a.best_probs;
  p.best_images = a.best_images;
  p.success_step = a.success_step;
  p.keep = keep;
  return p;
}

inline InputStepParams chunk_input_step_params(const ChunkArrays& a, const StepConfig& cfg, const int32_t* entry,
                                               int rows, int D, const float* grad, const uint8_t* keep) {
  InputStepParams p;
  p.rows = rows;
  p.D = D;
  p.entry = entry;
  p.keep = keep;
  p.grad = grad;
  p.x = a.x;
  p.x0 = a.x0;
  p.m = a.m;
  p.v = a.v;
  p.steps_done = a.steps_done;
  p.eps = a.eps;
  p.optimizer = cfg.optimizer;
  p.norm = cfg.norm;
  p.lr = cfg.lr;
  p.beta1 = cfg.beta1;
  p.beta2 = cfg.beta2;
  p.adam_eps = cfg.adam_eps;
  return p;
}

}  // namespace nudge::cuda
