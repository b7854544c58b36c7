// Softmax and the per-image losses of input optimization and training. CPU twin: loss_forward_backward_one
// (host/core/optimize_math.h) and the CPU backend's softmax.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "optimize_types.h"

namespace nudge::cuda {

struct SoftmaxLossParams {
  const float* logits = nullptr;        // [rows, K]
  int rows = 0, K = 0;
  // Row i's targets are those of entry entry[i] (the optimize chunk's active list); null: entry i.
  const int32_t* entry = nullptr;
  const float* target_dist = nullptr;   // [entries, K]; null: one-hot at target_class (training labels)
  const int32_t* target_kind = nullptr; // [entries] TargetKind; null: all OneHot
  const int32_t* target_class = nullptr;// [entries] one-hot target or true label
  LossKind loss = LossKind::CrossEntropy;
  float kappa = 0.0f;                   // Carlini-Wagner margin
  float dlogits_divisor = 1.0f;         // dlogits are divided by this: the batch size for a mean loss, else 1
  float* probs = nullptr;               // [rows, K] softmax
  float* loss_out = nullptr;            // [rows]
  float* dlogits = nullptr;             // [rows, K], or null for no gradient
  int32_t* correct = nullptr;           // [rows] argmax(logits) == target_class (first maximum), or null
};

// Writes probs, loss_out and (when non-null) dlogits and correct for every row.
void softmax_loss_cuda(const SoftmaxLossParams& p, cudaStream_t stream);

// probs [rows, K] = softmax(logits) only (prediction).
void softmax_cuda(const float* logits, int rows, int K, float* probs, cudaStream_t stream);

}  // namespace nudge::cuda
