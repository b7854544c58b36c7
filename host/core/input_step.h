// One update of one image's pixels: the CPU twin of the fused optimizer-step kernel (kernels/input_step.cu).
//   Adam:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  x -= lr * mhat / (sqrt(vhat) + eps), t = 1-based step
//   SGD:   x -= lr * g
//   Sign:  x -= lr * sign(g)                  (FGSM / I-FGSM / PGD)
// then the projection: onto the eps-ball around x0 (Linf: clip each pixel; L2: scale the whole difference), then
// clamp to [0,1]. Clamping after the L2 projection cannot leave the ball: it only shrinks |x - x0| per pixel.
#pragma once
#include "optimize_types.h"

namespace nudge {

void input_update_one(float* x, const float* g, float* m, float* v, int t, const float* x0, int D, float eps,
                      const StepConfig& cfg);

// The optimizer's move alone, without projection (for free variables such as a sigmoid parametrisation).
void optimizer_update_one(float* x, const float* g, float* m, float* v, int t, int D, const StepConfig& cfg);

// Projection alone (used for random starts too).
void project_one(float* x, const float* x0, int D, float eps, Norm norm);

}  // namespace nudge
