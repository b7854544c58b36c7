// The fused input-optimizer step: gradient update, projection onto the eps-ball, clamp to [0,1], for every active
// entry of an optimize chunk in one launch. CPU twin: input_update_one / project_one (host/core/optimize_math.h).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "optimize_types.h"

namespace nudge::cuda {

struct InputStepParams {
  int rows = 0, D = 0;
  const int32_t* entry = nullptr;  // [rows] row i updates entry entry[i]
  const uint8_t* keep = nullptr;   // [rows] rows with keep 0 are skipped (stopped entries); null: all rows
  const float* grad = nullptr;     // [rows, D] loss gradient w.r.t. the iterate, by row
  float* x = nullptr;              // [entries, D] iterates, updated in place
  const float* x0 = nullptr;       // [entries, D] centres of the balls
  float* m = nullptr;              // [entries, D] Adam moments (Adam only, else may be null)
  float* v = nullptr;
  int32_t* steps_done = nullptr;   // [entries] incremented per update; Adam's t is the new value
  const float* eps = nullptr;      // [entries] radii (read unless norm is None)
  InputOptimizer optimizer = InputOptimizer::Adam;
  Norm norm = Norm::None;
  float lr = 0.1f, beta1 = 0.9f, beta2 = 0.999f, adam_eps = 1e-7f;
};

void input_step_cuda(const InputStepParams& p, cudaStream_t stream);

}  // namespace nudge::cuda
