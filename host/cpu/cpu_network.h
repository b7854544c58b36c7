// The network's forward and backward passes on the CPU for one batch, single-threaded: the CPU backend gives each
// thread its own CpuNetwork and slice of the batch (a training batch of a model with bn is one slice: its statistics
// are the whole batch's). Parameters are passed in, so one network object serves any
// parameter buffer (the backend's master copy, or a perturbed copy in gradient tests).
#pragma once
#include <cstdint>
#include <vector>

#include "architecture.h"

namespace nudge {

// What a training forward needs beyond the parameters: the key of every row's dropout masks (dropout_mask.h). A
// forward given one runs bn on the batch's statistics and draws dropout masks; without one, bn uses its running
// statistics and dropout is the identity (eval mode).
struct TrainingPass {
  uint64_t seed = 0;
  uint64_t step = 0;                  // Adam's step count of this update, from 1
  const uint32_t* row_keys = nullptr; // [n] each row's index in the whole step's batch
};

class CpuNetwork {
 public:
  // Every image's logits and input gradient are the same bits whatever else shares its batch (chunking and early
  // stop change batch composition): the layers' products are column_gemm's (host/cpu/column_gemm.h).
  explicit CpuNetwork(const Architecture& arch);

  // params: one pointer per Architecture::params() entry. Keeps the activations of the last forward (and its mode,
  // for backward).
  void forward(const std::vector<const float*>& params, const float* x, int n, const TrainingPass* training = nullptr);
  const float* logits() const { return out(static_cast<int>(arch_.layers.size()) - 1); }

  // Backpropagates dlogits [n,K] through the last forward. param_grads (one pointer per parameter, overwritten)
  // and dx [n,D] are each optional.
  void backward(const std::vector<const float*>& params, const float* dlogits, int n,
                const std::vector<float*>* param_grads, float* dx);

  const Architecture& arch() const { return arch_; }
  // The mean and biased variance per channel that bn layer `layer` normalised with in the last training forward.
  const std::vector<double>& batch_mean(int layer) const { return bn_mean_[layer]; }
  const std::vector<double>& batch_var(int layer) const { return bn_var_[layer]; }

 private:
  void reserve_buffers(int n);  // reserve() without the out-of-memory message
  const float* out(int layer) const;
  void reserve(int n);

  Architecture arch_;
  // layer -> index of its first tensor in params (weight, bias; bn: then running mean and var), -1 if none
  std::vector<int> param_index_;
  std::vector<int> dropout_ordinal_;  // layer -> its place among the dropout layers, -1 if not one
  std::vector<bool> relu_fused_;      // layer -> a conv or dense layer whose pass also applies the ReLU after it
  int capacity_ = 0;
  const float* x_ = nullptr;
  std::vector<std::vector<float>> act_;
  std::vector<std::vector<int32_t>> argmax_;
  bool training_ = false;  // the last forward's mode
  std::vector<std::vector<double>> bn_mean_, bn_var_;  // per bn layer: the statistics its last forward used
  std::vector<std::vector<uint8_t>> keep_;             // per dropout layer: the last training forward's mask
  std::vector<float> grad_a_, grad_b_;
};

}  // namespace nudge
