// The network's forward and backward passes on the CPU for one batch, single-threaded: the CPU backend gives each
// thread its own CpuNetwork and slice of the batch. Parameters are passed in, so one network object serves any
// parameter buffer (the backend's master copy, or a perturbed copy in gradient tests).
#pragma once
#include <cstdint>
#include <vector>

#include "architecture.h"

namespace nudge {

class CpuNetwork {
 public:
  // batch_invariant: every image goes through its own BLAS calls, so its results are bit-identical whatever else
  // shares its batch (chunking and early stop change batch composition; a GEMM's rounding may depend on its shape).
  // Training leaves it off and groups images into larger, faster GEMMs.
  explicit CpuNetwork(const Architecture& arch, bool batch_invariant = false);

  // params: one pointer per Architecture::params() entry. Keeps the activations of the last forward.
  void forward(const std::vector<const float*>& params, const float* x, int n);
  const float* logits() const { return out(static_cast<int>(arch_.layers.size()) - 1); }

  // Backpropagates dlogits [n,K] through the last forward. param_grads (one pointer per parameter, overwritten)
  // and dx [n,D] are each optional.
  void backward(const std::vector<const float*>& params, const float* dlogits, int n,
                const std::vector<float*>* param_grads, float* dx);

  const Architecture& arch() const { return arch_; }

 private:
  void reserve_buffers(int n);  // reserve() without the out-of-memory message
  const float* out(int layer) const;
  // Calls f(count, in_offset, out_offset) once for the whole batch, or once per image when batch-invariant.
  template <class F>
  void for_images(int n, size_t in_size, size_t out_size, F&& f) const;
  void reserve(int n);

  Architecture arch_;
  bool batch_invariant_;
  std::vector<int> param_index_;  // layer -> index of its weight in params (bias is +1), -1 if none
  int capacity_ = 0;
  const float* x_ = nullptr;
  std::vector<std::vector<float>> act_;
  std::vector<std::vector<int32_t>> argmax_;
  std::vector<float> grad_a_, grad_b_;
};

}  // namespace nudge
