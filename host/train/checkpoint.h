// The checkpoint `nudge train` writes after every epoch, so that an interrupted run continues with --resume and
// finishes with the very model an uninterrupted run writes. One safetensors file, "<model>.checkpoint":
//   tensors   the weights under their parameter names; Adam's moments as "adam.m.<name>" and "adam.v.<name>" (same
//             shapes); the guard's kept weights as "best.<name>" (adversarial training with a held-out check only)
//   metadata  "nudge.architecture" as in a model file, and "nudge.checkpoint": JSON with the format version, the
//             job's spec (below), the device, the epoch, Adam's step count, the summary of every epoch so far
//             (stats, the guard's kept epoch and verdict) and the epochs after which earlier runs resumed.
// Every float travels as raw F32 or as a JSON number that reads back exactly, so nothing is rounded on the way.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "dataset.h"
#include "train.h"

namespace nudge {

// "runs/m.safetensors" -> "runs/m.safetensors.checkpoint".
std::string checkpoint_path_for(const std::string& model_path);

// What makes one training job: every option that changes the trained model, as (flag, value) in command-line order,
// then the training data's identity (its size and a hash of its pixels and labels). A resume must match it exactly.
using TrainSpec = std::vector<std::pair<std::string, std::string>>;
TrainSpec train_spec(const std::string& arch, const TrainOptions& opt, const Dataset& train);

// "" when a checkpoint made for `then` may continue as `now`; else one line naming what differs, e.g. "the checkpoint
// was made with --epochs 10, this command says 12" (and how many more options differ).
std::string spec_difference(const TrainSpec& then, const TrainSpec& now);

struct TrainCheckpoint {
  TrainSpec spec;
  std::string device;              // Backend::name() of the run that wrote it
  std::vector<int> resumed_after;  // the epochs after which earlier runs of this job were resumed, in order
  TrainProgress progress;
};

std::string serialize_checkpoint(const TrainCheckpoint& c);
// Throws InputError naming `what` for anything malformed: a checkpoint is read back as hostile as a model file.
TrainCheckpoint parse_checkpoint(const std::string& bytes, const std::string& what);
TrainCheckpoint read_checkpoint(const std::string& path);

}  // namespace nudge
