// A model's inference form: what every command that does not train runs (predict, eval, optimize, visualize,
// robustness, training's own held-out checks and attacks), so that no backend's inference path, the fused CUDA
// kernel included, ever meets a layer that behaves differently in training.
#pragma once
#include "model.h"

namespace nudge {

// Every bn folded into the conv or dense layer right before it (which the grammar guarantees), with its running
// statistics: per output channel o, a = gamma_o / sqrt(running_var_o + 1e-5), W[o] *= a and
// b_o = (b_o - running_mean_o) a + beta_o, each computed in double from the float values and rounded once. Every
// dropout removed (the identity outside training). The metadata is kept. A model without such layers comes back
// unchanged, bit for bit.
Model fold_for_inference(const Model& model);

}  // namespace nudge
