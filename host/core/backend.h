// The compute interface that the CPU backend implements and the CUDA backend implements too. Callers (train, eval,
// predict, the optimize engine) talk only to this, with host pointers; a backend keeps its own copies of weights
// and state wherever it computes.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "apgd_run.h"
#include "errors.h"
#include "fab_run.h"
#include "forward_session.h"
#include "model.h"
#include "optimize_types.h"
#include "square_run.h"

namespace nudge {


struct AdamConfig {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-7f;
  // Keys the step's dropout masks with the step count (dropout_mask.h): the run's seed, so that a run is reproducible.
  uint64_t dropout_seed = 0;
};

// The training optimizer's state, for a checkpoint that resumes bit for bit: Adam's moments, flat in the order and
// layout of the loaded model's parameters (Architecture::params(), each tensor's elements in turn), and its step
// count, which sets the bias corrections.
struct TrainState {
  std::vector<float> adam_m, adam_v;
  long step = 0;
};

struct TrainStepResult {
  double loss_sum = 0;  // summed cross-entropy over the batch (TRADES: of the clean images)
  int correct = 0;      // argmax == label (TRADES: of the clean images)
  double kl_sum = 0;    // TRADES only: summed KL(p(clean) || p(attacked))
  int adv_correct = 0;  // TRADES only: attacked images still classified as their label
};

// Start images a backend may make itself instead of reading ChunkInput::start (which holds the same images all the
// same, for backends that read it): entry i starts from image (first_row + i / entries_per_row) / rows_per_source
// of the job's generator, bit for bit what StartImages::fill makes (noise: counter_uniform(seed, kStreamNoise,
// image, pixel); gray: the value). Gauss is not offered: its Box-Muller takes double log/cos/sin, whose device
// versions may round differently from the host's, and the start must be the very image the report describes.
struct GeneratedStarts {
  enum class Kind { None, Noise, Gray };
  Kind kind = Kind::None;
  uint64_t seed = 0;
  float gray = 0.5f;
  long first_row = 0;
  int entries_per_row = 1, rows_per_source = 1;
};

// The per-entry inputs of one chunk of an optimize job. All pointers are host memory. A backend may read them after
// begin_optimize returns (the CUDA backend stages them in the background), so they must stay valid until the
// chunk's finish() has returned, or the chunk is destroyed.
struct ChunkInput {
  int n = 0;
  const float* start = nullptr;         // [n, D] x0: the image each entry starts from and the centre of its eps-ball
  const float* init = nullptr;          // [n, D] first iterate (random start inside the ball), or null for x0
  const float* target_dist = nullptr;   // [n, K]
  const int32_t* target_kind = nullptr; // [n] TargetKind
  const int32_t* target_class = nullptr;// [n] one-hot target, or true label for untargeted
  const float* eps = nullptr;           // [n] radius, read when config.norm != None
  GeneratedStarts generated;            // how a backend may make `start` itself (Kind::None: read `start`)
};

struct ChunkResult {
  std::vector<float> best_images;     // [n, D] the first iterate that met the goal, else the lowest-loss one
  std::vector<float> best_probs;      // [n, K] probabilities of that iterate
  std::vector<float> best_loss;       // [n]
  std::vector<int32_t> success_step;  // [n] index of the first iterate that met the goal (0 = the start), -1 never
  std::vector<int32_t> updates;       // [n] updates applied to the entry (less than the budget if it stopped early)
  // [n] or empty: the argmax of each entry's first evaluation, given by a chunk whose first iterate is the start
  // image (no init); the engine takes it as the start image's class instead of a predict pass of its own.
  std::vector<int32_t> start_class;
};

// A chunk of entries being optimized; its state lives on the backend's device.
class OptimizeChunk {
 public:
  virtual ~OptimizeChunk() = default;
  // The implementation this chunk runs: "layers" or "fused" (for reports).
  virtual std::string path() const { return "layers"; }
  // One step per call: evaluate each active entry's current iterate (goal, best-iterate bookkeeping, early stop),
  // then, for entries still active, a gradient step and projection. Entries that stopped cost nothing further.
  virtual void step() = 0;
  virtual int active_count() const = 0;
  // Evaluates the final iterate of every still-active entry (the budget's last update is otherwise never judged)
  // and returns everything to the host. Call once, after the last step().
  virtual ChunkResult finish() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu (OpenBLAS, 2 threads)", "cuda (NVIDIA H100 ...)"
  virtual bool is_gpu() const = 0;

  // Also resets the training optimizer state. A model with bn or dropout (Architecture::has_training_layers) is
  // trained as it is, while every inference method below (predict, input_gradient, logit_backprop, begin_optimize)
  // runs its folded form (model_fold.h) of the current weights.
  virtual void load_model(const Model& model) = 0;
  // Parameters back into `model`: what the backend trains, unfolded with its buffers on the CPU; the CUDA backend,
  // which trains no bn or dropout, holds and stores such a model folded.
  virtual void store_model(Model& model) = 0;

  // Why this backend cannot train `arch` ("" when it can): nudge train asks before anything runs.
  virtual std::string training_refusal(const Architecture& arch) const {
    (void)arch;
    return "";
  }

  // The optimizer state that load_model reset and train steps advanced, and its restoration after a load_model of the
  // same weights (InternalError when the sizes do not fit the loaded model).
  virtual TrainState export_train_state() = 0;
  virtual void import_train_state(const TrainState& state) = 0;

  // probs [n, K]. x [n, D] with D = C*H*W of the model's input.
  virtual void predict(const float* x, int n, float* probs) = 0;

  // One Adam step on a batch with cross-entropy to the labels. Returns the batch's summed loss and correct count
  // from the forward pass before the update.
  virtual TrainStepResult train_step(const float* x, const int32_t* labels, int n, const AdamConfig& adam) = 0;

  // One Adam step on TRADES' loss (host/core/optimize_math.h): the batch mean of CE(clean) + beta * KL(p(clean) || p(adv)),
  // with gradient through both passes. x_clean and x_adv are [n, D], example i attacked into x_adv[i].
  virtual TrainStepResult train_step_trades(const float* x_clean, const float* x_adv, const int32_t* labels, int n,
                                            float beta, const AdamConfig& adam) = 0;

  // Loss and its gradient with respect to the input, per image (probs [n,K], loss [n], grad [n,D]). grad null: the
  // loss and probabilities only, without the backward pass.
  virtual void input_gradient(const float* x, int n, const float* target_dist, const int32_t* target_kind,
                              const int32_t* target_class, LossKind loss, float kappa, float* probs, float* loss_out,
                              float* grad) = 0;

  // For losses that are not a LossKind (the attacks' DLR and margin losses, FAB's linearisation): forwards x [n, D],
  // hands each slice's logits to `dlogits_of(first, m, logits, dlogits)` (rows first..first+m-1; logits [m, K] in,
  // dlogits [m, K] out, ignored when grad is null) and writes to grad [n, D] the input gradient of
  // sum_j dlogits_j * z_j, i.e. the chain rule through the network. grad null: forward only. The callback may run on
  // several threads at once, for disjoint rows, and must not call into this backend (the slice's activations are
  // still needed); an exception it throws propagates to the caller, and grad is then unspecified.
  using LogitGradient = std::function<void(int first, int m, const float* logits, float* dlogits)>;
  virtual void logit_backprop(const float* x, int n, const LogitGradient& dlogits_of, float* grad) = 0;

  virtual std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) = 0;

  // An APGD run whose state stays on this backend's device, iterations queued without a host round trip
  // (apgd_run.h), or null when the backend has none: the attack then runs its rows on the host and the network
  // through logit_backprop (host/attack/apgd_host_device.h). The CUDA backend has one.
  virtual std::unique_ptr<ApgdDevice> begin_apgd(const ApgdRunInput& in) {
    (void)in;
    return nullptr;
  }

  // A Square run (L-inf or L2) whose state stays on this backend's device (square_run.h), or null: Square then runs
  // on the host through begin_forward_session. The CUDA backend has one.
  virtual std::unique_ptr<SquareDevice> begin_square(const SquareRunInput& in) {
    (void)in;
    return nullptr;
  }

  // A FAB-T run whose state stays on this backend's device (fab_run.h), or null: FAB then runs its rows on the host
  // and the network through logit_backprop (host/attack/fab_host_device.h). The CUDA backend has one.
  virtual std::unique_ptr<FabDevice> begin_fab(const FabRunInput& in) {
    (void)in;
    return nullptr;
  }

  // A session of n bases whose candidates cost only what their change reaches (forward_session.h), for a model of
  // `classes` outputs. The default runs whole forward passes; the CPU backend keeps each base's activations.
  virtual std::unique_ptr<ForwardSession> begin_forward_session(int n, int classes) {
    return make_plain_forward_session(*this, n, classes);
  }
  // Whether several of this backend's forward sessions may run at once, each on the thread that calls it (an OpenMP
  // region nested in the caller's runs on one thread). The default sessions call into the backend itself, so not.
  virtual bool concurrent_forward_sessions() const { return false; }

  // Why this backend cannot run optimize chunks on `path` for the loaded model ("" when it can): job validation
  // asks before any compute, and begin_optimize(in, cfg) may then assume cfg.path is runnable.
  virtual std::string path_refusal(OptimizePath path) const {
    return path == OptimizePath::Fused ? "--path fused needs the CUDA backend (this is " + name() + ")" : "";
  }

  // The largest chunk this backend wants at once (memory and cache bound).
  virtual int preferred_chunk() const = 0;
};

}  // namespace nudge
