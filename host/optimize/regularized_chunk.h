// An optimize chunk for regularised and ensemble objectives: the networks run on their backends
// (Backend::input_gradient, so CPU or GPU), the image priors and the update run here on the host. Slower per step
// than a backend's own chunk (the images cross to the backend and back each step), which suits visualisation jobs
// of thousands of images, not attack jobs of millions.
//
// Per step and active entry: the models see the image (shifted by this step's jitter); their losses and input
// gradients are summed; the priors' gradients are added; the update moves the pixels (or, with the sigmoid
// parametrisation, the free variables behind them); every blur_every updates the image is blurred. An entry's goal
// is met when every model's probabilities meet it; probabilities reported are the first model's.
#pragma once
#include <memory>
#include <vector>

#include "backend.h"
#include "regularizers.h"

namespace nudge {

// models[0] is the primary model; all must share the input shape and class count. first_entry numbers the chunk's
// entries within the job, so that jitter is independent of chunking.
std::unique_ptr<OptimizeChunk> make_regularized_chunk(const std::vector<Backend*>& models, int height, int width,
                                                      int classes, const ChunkInput& in, const StepConfig& cfg,
                                                      const RegularizerConfig& reg, uint64_t seed, uint64_t first_entry);

}  // namespace nudge
