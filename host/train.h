// Training a classifier with Adam on mini-batches, through any Backend.
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"
#include "dataset.h"

namespace nudge {

struct TrainOptions {
  int epochs = 5;
  int batch = 32;
  uint64_t seed = 1;
  int limit = 0;  // use only the first `limit` training images (0 = all)
  AdamConfig adam;
  bool progress = true;
};

struct EpochStats {
  int epoch = 0;
  double loss = 0, accuracy = 0, seconds = 0, images_per_s = 0;
};

// Trains `model` in place (the backend holds the working copy; the result is stored back into `model`).
std::vector<EpochStats> train_model(Backend& backend, Model& model, const Dataset& data, const TrainOptions& opt);

// Throws InputError ("training diverged ...") when a batch's loss is NaN or infinite: the run stops before its model
// is saved, so a diverged run never replaces the previous model file.
void check_loss_finite(double loss_sum, int epoch, int batch, int batches, float lr);
// The same for the trained weights: a finite loss can hide weights that Model::load would refuse (beyond
// kMaxWeightMagnitude), and such a file must not replace the previous model either.
void check_weights_loadable(const Model& model, float lr);

// The order of training images for an epoch: a Fisher-Yates shuffle driven by the counter generator, so it depends
// only on (seed, epoch).
std::vector<int> epoch_order(int count, uint64_t seed, int epoch);

}  // namespace nudge
