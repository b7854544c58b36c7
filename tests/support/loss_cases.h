// The (loss, target kind) cases the CPU gradient and loss suites run through (tests/test_gradients_network.cpp,
// tests/test_losses.cpp): every loss with each target kind it accepts.
#pragma once
#include "optimize_types.h"

namespace nudge::testing_support {

struct LossCase {
  const char* name;
  LossKind loss;
  TargetKind kind;
  float kappa;  // large enough that Carlini-Wagner is active (logits of these models are O(1))
};

extern const LossCase kLossCases[6];

}  // namespace nudge::testing_support
