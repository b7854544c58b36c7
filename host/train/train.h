// Training a classifier with Adam on mini-batches, through any Backend: standard training on the clean images, or
// adversarial training (host/train/adversarial.h), where each batch is first attacked and the model then trained on the
// attacked images (PGD-AT, Fast-AT) or on TRADES' loss.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "adversarial.h"
#include "backend.h"
#include "dataset.h"
#include "nondigits.h"
#include "train_schedule.h"

namespace nudge {

struct TrainOptions {
  int epochs = 5;
  int batch = 32;
  uint64_t seed = 1;
  int limit = 0;  // use only the first `limit` training images (0 = all)
  AdamConfig adam;  // adam.lr is the schedule's peak
  LrSchedule lr_schedule = LrSchedule::Constant;
  AdversarialConfig adv;
  // Open set: this many synthetic non-digits (drawn in turn from `open_set_families`) join every batch, labelled
  // with the model's last class, "not a digit" (nondigits.h). 0: a plain 10-class run.
  int open_set_per_batch = 0;
  std::vector<NonDigitFamily> open_set_families;
  // Augmentation: every training digit is shifted by up to this many pixels in each direction (zeros come in;
  // shift_image of host/optimize/regularizers.h), the shift drawn per (seed, epoch, image) by the counter
  // generator. 0: none.
  int augment_shift = 0;
  bool progress = true;
};

struct EpochStats {
  int epoch = 0;
  double loss = 0, accuracy = 0, seconds = 0, images_per_s = 0;  // of the clean images
  double adv_loss = -1, adv_accuracy = -1;  // of the attacked images the model trained on (adversarial only)
  double lr = 0, eps = 0;                   // at the epoch's last batch
  long attack_image_steps = 0;              // attack updates applied in the epoch
  // The guard's check on the held-out images at the full eps (adversarial only, else -1).
  double check_clean = -1, check_robust = -1;
};

struct TrainSummary {
  std::vector<EpochStats> epochs;
  int trained_images = 0;   // per epoch
  int check_images = 0;     // held out for the guard's check
  int kept_epoch = 0;       // the epoch whose model is returned (1-based)
  bool collapsed = false;   // the guard saw robust accuracy collapse and stopped
  std::string guard_message;
};

// The state of a run after `epoch` complete epochs: what a checkpoint holds (checkpoint.h) and a resumed run starts
// from. Everything else a run uses (the epoch's shuffle, the attacks' seeds, the schedules' lr and eps, the guard's
// check) is a function of (seed, epoch, batch), so this is enough to continue bit for bit.
struct TrainProgress {
  int epoch = 0;
  Model model;           // the weights after those epochs
  TrainState optimizer;  // Adam's moments and step count
  TrainSummary summary;  // their stats, the guard's kept epoch and verdict
  Model best;            // the guard's kept weights (adversarial training with a check), else no params
};

struct TrainHooks {
  const TrainProgress* resume = nullptr;                  // continue from here; `model` is then only overwritten
  std::function<void(const TrainProgress&)> epoch_done;  // after every complete epoch (the checkpoint writer)
};

// Trains `model` in place (the backend holds the working copy; the result is stored back into `model`). With
// adversarial training and a guard, the last check_count training images are held out. Polls for SIGINT/SIGTERM
// before every batch (interrupt.h): an Interrupted then leaves, and the last epoch_done holds the last complete epoch.
std::vector<EpochStats> train_model(Backend& backend, Model& model, const Dataset& data, const TrainOptions& opt,
                                    TrainSummary* summary = nullptr, const TrainHooks& hooks = {});

// Throws InputError ("training diverged ...") when a batch's loss is NaN or infinite: the run stops before its model
// is saved, so a diverged run never replaces the previous model file.
void check_loss_finite(double loss_sum, int epoch, int batch, int batches, float lr);
// The same for the trained weights: a finite loss can hide weights that Model::load would refuse (beyond
// kMaxWeightMagnitude), and such a file must not replace the previous model either.
void check_weights_loadable(const Model& model, float lr);

// Throws InputError where a model with bn cannot be trained as asked: TRADES (one forward of clean and attacked
// images would mix their batch statistics), or a batch with a single value per channel of some bn (a bn after a
// dense layer, and an epoch of `count` images leaving a batch of one; `extra` images join every batch).
void check_trainable_with_batch_norm(const Architecture& arch, const TrainOptions& opt, int count, int extra);

// The order of training images for an epoch: a Fisher-Yates shuffle driven by the counter generator, so it depends
// only on (seed, epoch).
std::vector<int> epoch_order(int count, uint64_t seed, int epoch);

}  // namespace nudge
