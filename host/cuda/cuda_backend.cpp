// The CUDA backend: the Backend interface over CudaNetwork, the kernels in kernels/ and CudaOptimizeChunk. Host
// pointers in, host pointers out; parameters, Adam state and chunk state stay on the device.
#include "cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "adam.cuh"
#include "cuda_apgd.h"
#include "cuda_fab.h"
#include "cuda_square.h"
#include "cuda_check.h"
#include "cuda_context.h"
#include "cuda_network.h"
#include "cuda_optimize_chunk.h"
#include "device_memory.h"
#include "fused_chunk.h"
#include "model_fold.h"
#include "nvtx.h"
#include "errors.h"
#include "softmax_loss.cuh"
#include "stream_copy.h"
#include "trades_loss.cuh"

namespace nudge {

namespace cuda {

namespace {

// One context per card for every backend of the process (an ensemble's or a judge's models are backends of their
// own): a context is two streams, cuBLAS and cuDNN handles with their algorithm cache, the cuDNN workspace, pinned
// staging and an upload thread, none of which a second copy on the same card would make faster. The backends of a
// job are driven from one host thread, as a context's compute must be. Alive while any backend holds it.
std::shared_ptr<CudaContext> shared_context(int device) {
  static std::mutex mutex;
  static std::map<int, std::weak_ptr<CudaContext>> live;
  std::lock_guard<std::mutex> lock(mutex);
  std::weak_ptr<CudaContext>& slot = live[device];
  if (std::shared_ptr<CudaContext> ctx = slot.lock()) return ctx;
  auto ctx = std::make_shared<CudaContext>(device);
  slot = ctx;
  return ctx;
}

// Images per pass for predict and input_gradient: enough to fill an H100 (a few thousand images already saturate
// it for the reference model) while keeping this network's activations at ~1 GB, so it never crowds out a chunk.
constexpr int kSliceImages = 4096;
// Chunk sizes preferred_chunk() chooses between.
constexpr int kMinChunk = 256, kMaxChunk = 131072;

// Target classes index the logits on the device, so a bad one would read out of bounds there. The dataset reader and
// validate_job refuse bad labels and targets; this asserts that precondition on the host.
void assert_classes(const int32_t* cls, const int32_t* kind, int n, int K, const char* what) {
  for (int i = 0; i < n; ++i) {
    const bool needs_class = !kind || static_cast<TargetKind>(kind[i]) != TargetKind::Soft;
    if (needs_class && (cls[i] < 0 || cls[i] >= K))
      throw InternalError(std::string(what) + ": entry " + std::to_string(i) + " has class " + std::to_string(cls[i]) +
                          "; the model has " + std::to_string(K) + " classes");
    if (kind && (kind[i] < 0 || kind[i] > static_cast<int32_t>(TargetKind::Untargeted)))
      throw InternalError(std::string(what) + ": entry " + std::to_string(i) + " has an unknown target kind " +
                          std::to_string(kind[i]));
  }
}

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int device) : ctx_(shared_context(device)) {}
  // Queued work may read the buffers about to be freed. (A chunk from begin_optimize must not outlive its backend.)
  ~CudaBackend() override { cudaStreamSynchronize(ctx_->stream()); }

  // The optimize path that ran is reported by each chunk (OptimizeChunk::path), since it can differ per job.
  std::string name() const override { return "cuda (" + ctx_->description() + ")"; }
  bool is_gpu() const override { return true; }

  void load_model(const Model& loaded) override {
    assert_params_match_architecture(loaded, "cuda backend");
    // This backend does not train bn or dropout (nudge train refuses it up front, training_refusal): it holds only
    // the folded model, which every inference path, the fused kernel's included, runs like any other.
    trains_loaded_ = !loaded.arch.has_training_layers();
    loaded_text_ = loaded.arch.to_string();
    const Model folded = trains_loaded_ ? Model() : fold_for_inference(loaded);
    const Model& model = trains_loaded_ ? loaded : folded;
    const std::vector<ParamSpec> specs = model.arch.params();
    std::vector<size_t> offsets;
    size_t total = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      offsets.push_back(total);
      total += model.params[i].size();
    }
    const bool same_arch = loaded_ && model.arch == arch_;
    loaded_ = false;
    fused_packed_ = false;
    ctx_->synchronize();  // queued work may still read the old parameters
    if (params_.size() != total) {
      params_ = DeviceBuffer<float>(total, "model parameters");
      grads_ = DeviceBuffer<float>(total, "parameter gradients");
      adam_m_ = DeviceBuffer<float>(total, "Adam m");
      adam_v_ = DeviceBuffer<float>(total, "Adam v");
    }
    const cudaStream_t s = ctx_->stream();
    for (size_t i = 0; i < specs.size(); ++i) upload(params_.get() + offsets[i], model.params[i].ptr(), model.params[i].size(), s);
    CUDA_CHECK(cudaMemsetAsync(adam_m_.get(), 0, total * sizeof(float), s));
    CUDA_CHECK(cudaMemsetAsync(adam_v_.get(), 0, total * sizeof(float), s));
    adam_t_ = 0;
    arch_ = model.arch;
    specs_ = specs;
    offsets_ = offsets;
    if (!same_arch) {
      net_ = std::make_unique<CudaNetwork>(*ctx_, arch_);
      batch_capacity_ = 0;
    }
    ctx_->synchronize();
    loaded_ = true;
  }

  void store_model(Model& model) override {
    require_model("store_model");
    model.arch = arch_;
    model.params.clear();
    for (size_t i = 0; i < specs_.size(); ++i) {
      Tensor t(specs_[i].shape);
      download(t.ptr(), params_.get() + offsets_[i], t.size(), ctx_->stream());
      model.params.push_back(std::move(t));
    }
    ctx_->synchronize();
  }

  TrainState export_train_state() override {
    require_model("export_train_state");
    TrainState state;
    state.adam_m.resize(adam_m_.size());
    state.adam_v.resize(adam_v_.size());
    download(state.adam_m.data(), adam_m_.get(), adam_m_.size(), ctx_->stream());
    download(state.adam_v.data(), adam_v_.get(), adam_v_.size(), ctx_->stream());
    ctx_->synchronize();
    state.step = adam_t_;
    return state;
  }

  void import_train_state(const TrainState& state) override {
    require_model("import_train_state");
    if (state.adam_m.size() != params_.size() || state.adam_v.size() != params_.size() || state.step < 0)
      throw InternalError("import_train_state: " + std::to_string(state.adam_m.size()) + " moments for a model of " +
                          std::to_string(params_.size()) + " parameters");
    upload(adam_m_.get(), state.adam_m.data(), state.adam_m.size(), ctx_->stream());
    upload(adam_v_.get(), state.adam_v.data(), state.adam_v.size(), ctx_->stream());
    ctx_->synchronize();  // the host vectors may go once this returns
    adam_t_ = state.step;
  }

  void predict(const float* x, int n, float* probs) override {
    require_model("predict");
    NvtxRange range("predict");
    const int D = arch_.input.size(), K = arch_.num_classes();
    const cudaStream_t s = ctx_->stream();
    const auto params = param_ptrs();
    for (int b = 0; b < n; b += kSliceImages) {
      const int m = std::min(kSliceImages, n - b);
      ensure_batch(m);
      upload(x_.get(), x + static_cast<size_t>(b) * D, static_cast<size_t>(m) * D, s);
      net_->forward(params, x_.get(), m);
      softmax_cuda(net_->logits(), m, K, probs_.get(), s);
      download(probs + static_cast<size_t>(b) * K, probs_.get(), static_cast<size_t>(m) * K, s);
      ctx_->synchronize();
    }
  }

  std::string training_refusal(const Architecture& arch) const override { return cuda_training_refusal(arch); }

  TrainStepResult train_step(const float* x, const int32_t* labels, int n, const AdamConfig& adam) override {
    require_model("train_step");
    require_trainable();
    if (n <= 0) throw InternalError("train_step: empty batch");
    NvtxRange range("train_step");
    const int D = arch_.input.size(), K = arch_.num_classes();
    assert_classes(labels, nullptr, n, K, "train_step labels");
    const cudaStream_t s = ctx_->stream();
    const auto params = param_ptrs();
    ensure_batch(n);  // the whole batch at once: the gradient is over all of it
    upload(x_.get(), x, static_cast<size_t>(n) * D, s);
    upload(cls_.get(), labels, n, s);
    net_->forward(params, x_.get(), n);

    SoftmaxLossParams lp;
    lp.logits = net_->logits();
    lp.rows = n;
    lp.K = K;
    lp.target_class = cls_.get();  // no distributions: one-hot at the label
    lp.loss = LossKind::CrossEntropy;
    lp.dlogits_divisor = static_cast<float>(n);  // mean over the batch, divided as the CPU does
    lp.probs = probs_.get();
    lp.loss_out = loss_.get();
    lp.dlogits = dlogits_.get();
    lp.correct = correct_.get();
    softmax_loss_cuda(lp, s);

    std::vector<float*> grads;
    for (size_t off : offsets_) grads.push_back(grads_.get() + off);
    net_->backward(params, dlogits_.get(), n, &grads, nullptr);

    adam_step(adam, s);

    host_loss_.resize(n);
    host_correct_.resize(n);
    download(host_loss_.data(), loss_.get(), n, s);
    download(host_correct_.data(), correct_.get(), n, s);
    ctx_->synchronize();
    TrainStepResult r;
    for (int i = 0; i < n; ++i) {
      r.loss_sum += host_loss_[i];
      r.correct += host_correct_[i];
    }
    return r;
  }

  TrainStepResult train_step_trades(const float* x_clean, const float* x_adv, const int32_t* labels, int n, float beta,
                                    const AdamConfig& adam) override {
    require_model("train_step_trades");
    require_trainable();
    if (n <= 0) throw InternalError("train_step_trades: empty batch");
    NvtxRange range("train_step_trades");
    const int D = arch_.input.size(), K = arch_.num_classes();
    assert_classes(labels, nullptr, n, K, "train_step_trades labels");
    const cudaStream_t s = ctx_->stream();
    const auto params = param_ptrs();
    // Clean and attacked images form one batch of 2n: one forward and one backward give both passes' gradients.
    ensure_batch(2 * n);
    const size_t len = static_cast<size_t>(n) * D;
    upload(x_.get(), x_clean, len, s);
    upload(x_.get() + len, x_adv, len, s);
    upload(cls_.get(), labels, n, s);
    net_->forward(params, x_.get(), 2 * n);

    TradesLossParams tp;
    tp.logits = net_->logits();
    tp.labels = cls_.get();
    tp.n = n;
    tp.K = K;
    tp.beta = beta;
    tp.scale = 1.0f / static_cast<float>(n);
    tp.dlogits = dlogits_.get();
    tp.ce = loss_.get();
    tp.kl = loss_.get() + n;
    tp.clean_correct = correct_.get();
    tp.adv_correct = correct_.get() + n;
    trades_loss_cuda(tp, s);

    std::vector<float*> grads;
    for (size_t off : offsets_) grads.push_back(grads_.get() + off);
    net_->backward(params, dlogits_.get(), 2 * n, &grads, nullptr);
    adam_step(adam, s);

    host_loss_.resize(2 * n);
    host_correct_.resize(2 * n);
    download(host_loss_.data(), loss_.get(), 2 * n, s);
    download(host_correct_.data(), correct_.get(), 2 * n, s);
    ctx_->synchronize();
    TrainStepResult r;
    for (int i = 0; i < n; ++i) {
      r.loss_sum += host_loss_[i];
      r.kl_sum += host_loss_[n + i];
      r.correct += host_correct_[i];
      r.adv_correct += host_correct_[n + i];
    }
    return r;
  }

  // The logits go to the host for the caller's loss and the logit gradients come back: two transfers and a
  // synchronisation per slice of kSliceImages. No attack's iteration pays that on this backend any more (APGD has
  // begin_apgd, Square begin_square, FAB-T begin_fab) but L2 Square's on images too large for its kernels, which runs
  // on the host through forward sessions; the clean predictions and the tests' host devices use it too.
  // The callback runs with nothing queued on the stream (the logits' download has been waited for), so an
  // exception from it leaves as it came and the backend stays usable; later slices are not computed.
  void logit_backprop(const float* x, int n, const LogitGradient& dlogits_of, float* grad) override {
    require_model("logit_backprop");
    NvtxRange range("logit_backprop");
    const int D = arch_.input.size(), K = arch_.num_classes();
    const cudaStream_t s = ctx_->stream();
    const auto params = param_ptrs();
    for (int b = 0; b < n; b += kSliceImages) {
      const int m = std::min(kSliceImages, n - b);
      ensure_batch(m);
      upload(x_.get(), x + static_cast<size_t>(b) * D, static_cast<size_t>(m) * D, s);
      net_->forward(params, x_.get(), m);
      host_logits_.resize(static_cast<size_t>(m) * K);
      host_dlogits_.assign(static_cast<size_t>(m) * K, 0.0f);
      download(host_logits_.data(), net_->logits(), static_cast<size_t>(m) * K, s);
      ctx_->synchronize();
      dlogits_of(b, m, host_logits_.data(), host_dlogits_.data());
      if (!grad) continue;
      upload(dlogits_.get(), host_dlogits_.data(), static_cast<size_t>(m) * K, s);
      net_->backward(params, dlogits_.get(), m, nullptr, dx_.get());
      download(grad + static_cast<size_t>(b) * D, dx_.get(), static_cast<size_t>(m) * D, s);
      ctx_->synchronize();
    }
  }

  void input_gradient(const float* x, int n, const float* target_dist, const int32_t* target_kind,
                      const int32_t* target_class, LossKind loss, float kappa, float* probs, float* loss_out,
                      float* grad) override {
    require_model("input_gradient");
    NvtxRange range("input_gradient");
    const int D = arch_.input.size(), K = arch_.num_classes();
    assert_classes(target_class, target_kind, n, K, "input_gradient");
    const cudaStream_t s = ctx_->stream();
    const auto params = param_ptrs();
    for (int b = 0; b < n; b += kSliceImages) {
      const int m = std::min(kSliceImages, n - b);
      ensure_batch(m);
      upload(x_.get(), x + static_cast<size_t>(b) * D, static_cast<size_t>(m) * D, s);
      upload(target_.get(), target_dist + static_cast<size_t>(b) * K, static_cast<size_t>(m) * K, s);
      upload(kind_.get(), target_kind + b, m, s);
      upload(cls_.get(), target_class + b, m, s);
      net_->forward(params, x_.get(), m);
      SoftmaxLossParams lp;
      lp.logits = net_->logits();
      lp.rows = m;
      lp.K = K;
      lp.target_dist = target_.get();
      lp.target_kind = kind_.get();
      lp.target_class = cls_.get();
      lp.loss = loss;
      lp.kappa = kappa;
      lp.probs = probs_.get();
      lp.loss_out = loss_.get();
      lp.dlogits = grad ? dlogits_.get() : nullptr;
      softmax_loss_cuda(lp, s);
      if (grad) net_->backward(params, dlogits_.get(), m, nullptr, dx_.get());
      download(probs + static_cast<size_t>(b) * K, probs_.get(), static_cast<size_t>(m) * K, s);
      download(loss_out + b, loss_.get(), m, s);
      if (grad) download(grad + static_cast<size_t>(b) * D, dx_.get(), static_cast<size_t>(m) * D, s);
      ctx_->synchronize();
    }
  }

  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
    require_model("begin_optimize");
    assert_classes(in.target_class, in.target_kind, in.n, arch_.num_classes(), "optimize");
    if (cfg.path != OptimizePath::Layers && fused_fits(nullptr)) {
      // Packed once per load_model (or training step), not per chunk; queued on the stream before the chunk's
      // launches, and after any earlier chunk's, which read the same weights.
      if (!fused_packed_) {
        fused_weights_ = pack_fused_weights(*ctx_, param_ptrs());
        fused_packed_ = true;
      }
      return make_fused_optimize_chunk_packed(*ctx_, fused_weights_.get(), in, cfg);
    }
    if (cfg.path == OptimizePath::Fused) throw InternalError("begin_optimize: --path fused was not refused before");
    return std::make_unique<CudaOptimizeChunk>(*ctx_, arch_, param_ptrs(), in, cfg);
  }

  // APGD's iterations stay on the card: no logit or gradient crosses PCIe, and the host never waits per iteration
  // (cuda_apgd.h).
  std::unique_ptr<ApgdDevice> begin_apgd(const ApgdRunInput& in) override {
    require_model("begin_apgd");
    return make_cuda_apgd_device(*ctx_, arch_, param_ptrs(), in);
  }

  // Square's queries (both norms) stay on the card too: candidates are made there and only a list length comes back,
  // iterations later (cuda_square.h).
  std::unique_ptr<SquareDevice> begin_square(const SquareRunInput& in) override {
    require_model("begin_square");
    return make_cuda_square_device(*ctx_, arch_, param_ptrs(), in);
  }

  // FAB-T's iterations too: the boundary, the projections (their sorts included) and the steps run on the card, and
  // only a list length comes back, iterations later (cuda_fab.h).
  std::unique_ptr<FabDevice> begin_fab(const FabRunInput& in) override {
    require_model("begin_fab");
    return make_cuda_fab_device(*ctx_, arch_, param_ptrs(), in);
  }

  std::string path_refusal(OptimizePath path) const override {
    std::string why;
    if (path != OptimizePath::Fused || fused_fits(&why)) return "";
    return "--path fused: " + (why.empty() ? "the fused kernel is specialised for the reference architecture " +
                                                 std::string(Architecture::reference_string())
                                           : why);
  }

  int preferred_chunk() const override {
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const Architecture arch = loaded_ ? arch_ : Architecture::reference();
    // Adam's moments are the most a chunk can need; keep the cuDNN workspace and 512 MiB of headroom free, and
    // take 85% of the rest (fragmentation, the cuDNN/cuBLAS libraries' own allocations), halved: the engine
    // begins the next chunk while the current one computes, so two live at once.
    const size_t per_entry = CudaOptimizeChunk::bytes_per_entry(arch, true);
    const size_t reserve = ctx_->workspace_limit() + (size_t{512} << 20);
    const size_t usable = free_b > reserve ? static_cast<size_t>((free_b - reserve) * 0.85 / 2) : 0;
    const size_t n = std::clamp<size_t>(usable / per_entry, kMinChunk, kMaxChunk);
    return static_cast<int>(n / kMinChunk * kMinChunk);
  }

 private:
  // Whether the fused kernel runs the loaded model on this device; `why` (may be null) says what the device lacks.
  bool fused_fits(std::string* why) const {
    return fused_path_supports(arch_) && fused_device_supports(*ctx_, why);
  }

  void require_model(const char* what) const {
    if (!loaded_) throw InternalError(std::string("CudaBackend::") + what + " before load_model");
  }

  // The loaded model was folded: training it here would train another model than the one asked for.
  void require_trainable() const {
    if (!trains_loaded_) throw InputError(cuda_training_refusal(Architecture::parse(loaded_text_)));
  }

  std::vector<const float*> param_ptrs() const {
    std::vector<const float*> p;
    for (size_t off : offsets_) p.push_back(params_.get() + off);
    return p;
  }

  // One Adam step over grads_, queued on s. Every parameter update goes through here, so this is where the fused
  // kernel's packed copy of the weights goes stale.
  void adam_step(const AdamConfig& adam, cudaStream_t s) {
    ++adam_t_;
    AdamStep step;
    step.lr = adam.lr;
    step.beta1 = adam.beta1;
    step.beta2 = adam.beta2;
    step.eps = adam.eps;
    // The same float expressions as the CPU backend, so the bias corrections agree bit for bit.
    step.c1 = 1.0f - std::pow(adam.beta1, static_cast<float>(adam_t_));
    step.c2 = 1.0f - std::pow(adam.beta2, static_cast<float>(adam_t_));
    adam_update_cuda(params_.get(), grads_.get(), adam_m_.get(), adam_v_.get(), params_.size(), step, s);
    fused_packed_ = false;  // the parameters changed
  }

  // Per-batch device buffers for up to n images, and the network's activations for them.
  void ensure_batch(int n) {
    if (n <= batch_capacity_) return;
    ctx_->synchronize();
    const size_t N = static_cast<size_t>(n), D = arch_.input.size(), K = arch_.num_classes();
    x_ = DeviceBuffer<float>(N * D, "batch images");
    dx_ = DeviceBuffer<float>(N * D, "batch input gradients");
    target_ = DeviceBuffer<float>(N * K, "batch targets");
    probs_ = DeviceBuffer<float>(N * K, "batch probabilities");
    dlogits_ = DeviceBuffer<float>(N * K, "batch logit gradients");
    loss_ = DeviceBuffer<float>(N, "batch losses");
    kind_ = DeviceBuffer<int32_t>(N, "batch target kinds");
    cls_ = DeviceBuffer<int32_t>(N, "batch classes");
    correct_ = DeviceBuffer<int32_t>(N, "batch correct flags");
    net_->reserve(n, true);  // train_step needs the weight gradients' workspace too
    batch_capacity_ = n;
  }

  std::shared_ptr<CudaContext> ctx_;  // shared with every other backend on this card (shared_context)
  bool loaded_ = false;
  bool trains_loaded_ = true;  // false: the loaded model had bn or dropout, and arch_ is its folded form
  std::string loaded_text_;    // the architecture as loaded, before folding
  Architecture arch_;
  std::vector<ParamSpec> specs_;
  std::vector<size_t> offsets_;
  DeviceBuffer<float> params_, grads_, adam_m_, adam_v_;
  long adam_t_ = 0;
  std::unique_ptr<CudaNetwork> net_;
  int batch_capacity_ = 0;
  DeviceBuffer<float> x_, dx_, target_, probs_, dlogits_, loss_;
  DeviceBuffer<int32_t> kind_, cls_, correct_;
  DeviceBuffer<float> fused_weights_;  // the parameters packed for the fused kernel, valid when fused_packed_
  bool fused_packed_ = false;
  std::vector<float> host_loss_, host_logits_, host_dlogits_;
  std::vector<int32_t> host_correct_;
};

}  // namespace

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device) { return std::make_unique<cuda::CudaBackend>(device); }

std::string cuda_training_refusal(const Architecture& arch) {
  if (!arch.has_training_layers()) return "";
  return "the CUDA backend does not train bn or dropout layers (" + arch.to_string() +
         "); train with --device cpu (every other command runs such a model on the GPU, folded)";
}

}  // namespace nudge
