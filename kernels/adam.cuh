// The Adam update of the model's parameters during training. CPU twin: the update loop of CpuBackend::train_step.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace nudge::cuda {

struct AdamStep {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-7f;
  float c1 = 1.0f, c2 = 1.0f;  // bias corrections 1 - beta^t, computed on the host exactly as the CPU does
};

// w -= lr (m / c1) / (sqrt(v / c2) + eps) after m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2; all [n].
void adam_update_cuda(float* w, const float* g, float* m, float* v, size_t n, const AdamStep& step,
                      cudaStream_t stream);

}  // namespace nudge::cuda
