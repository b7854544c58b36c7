// TRADES' training loss and its logit gradients for a batch laid out as [clean images; attacked images]. CPU twin:
// trades_loss_one (host/core/optimize_math.h), which this kernel calls: one source for both.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

struct TradesLossParams {
  const float* logits = nullptr;    // [2n, K]: rows 0..n-1 clean, rows n..2n-1 attacked (example i at row n + i)
  const int32_t* labels = nullptr;  // [n]
  int n = 0, K = 0;
  float beta = 1.0f;                // weight of the KL term
  float scale = 1.0f;               // gradients are multiplied by this (1/n for the batch mean)
  float* dlogits = nullptr;         // [2n, K]
  float* ce = nullptr;              // [n] CE(clean), unscaled
  float* kl = nullptr;              // [n] KL(p(clean) || p(attacked)), unscaled
  int32_t* clean_correct = nullptr; // [n] argmax(clean logits) == label (first maximum)
  int32_t* adv_correct = nullptr;   // [n] the same for the attacked image
};

void trades_loss_cuda(const TradesLossParams& p, cudaStream_t stream);

}  // namespace nudge::cuda
