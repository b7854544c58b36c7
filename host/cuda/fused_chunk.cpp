#include "cuda/fused_chunk.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "compact_active.cuh"
#include "cuda/cuda_check.h"
#include "cuda/cuda_context.h"
#include "cuda/device_memory.h"
#include "cuda/nvtx.h"
#include "errors.h"
#include "fused_optimize.cuh"

namespace nudge::cuda {

namespace {

constexpr int kD = 28 * 28, kK = 10;
// Without early stopping nothing needs the host between steps, so steps are batched; 8 makes the per-launch costs
// (launch, staging conv1/conv2, the tail of the last wave of tiles) small next to the steps' work.
constexpr int kStepsPerLaunchFree = 8;

template <class T>
void upload(DeviceBuffer<T>& dst, const T* src, size_t count, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpyAsync(dst.get(), src, count * sizeof(T), cudaMemcpyHostToDevice, s));
}

template <class T>
void download(std::vector<T>& dst, const DeviceBuffer<T>& src, size_t count, cudaStream_t s) {
  dst.resize(count);
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.get(), count * sizeof(T), cudaMemcpyDeviceToHost, s));
}

void check_input(const ChunkInput& in, const StepConfig& cfg) {
  if (in.n <= 0) throw InternalError("fused optimize chunk: a chunk needs at least one entry");
  if (!in.start || !in.target_dist || !in.target_kind || !in.target_class)
    throw InternalError("fused optimize chunk: start, target_dist, target_kind and target_class are required");
  if (cfg.norm != Norm::None && !in.eps) throw InternalError("fused optimize chunk: a norm ball needs eps");
  // The kernel indexes the logits with the class: check it here, where the message can name the entry.
  for (int i = 0; i < in.n; ++i) {
    const int32_t kind = in.target_kind[i];
    if (kind < 0 || kind > static_cast<int32_t>(TargetKind::Untargeted))
      throw InputError("optimize: entry " + std::to_string(i) + " has an unknown target kind " + std::to_string(kind));
    if (static_cast<TargetKind>(kind) != TargetKind::Soft && (in.target_class[i] < 0 || in.target_class[i] >= kK))
      throw InputError("optimize: entry " + std::to_string(i) + " has class " + std::to_string(in.target_class[i]) +
                       "; the model has " + std::to_string(kK) + " classes");
  }
}

int device_attribute(cudaDeviceAttr attr, int device) {
  int v = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, device));
  return v;
}

class FusedChunk : public OptimizeChunk {
 public:
  FusedChunk(CudaContext& ctx, DeviceBuffer<float> weights, const ChunkInput& in, const StepConfig& cfg,
             const FusedChunkOptions& options)
      : ctx_(ctx),
        cfg_(cfg),
        n_(in.n),
        active_count_(in.n),
        weights_(std::move(weights)) {
    if (options.tile < 0 || options.tile > kFusedTileMax)
      throw InternalError("fused optimize chunk: tile must be 0 (automatic) or 1.." + std::to_string(kFusedTileMax));
    if (options.steps_per_launch < 0) throw InternalError("fused optimize chunk: steps_per_launch must be >= 0");
    steps_per_launch_ = options.steps_per_launch > 0 ? options.steps_per_launch
                        : cfg.early_stop                ? 1
                                                        : kStepsPerLaunchFree;
    tile_ = options.tile;
    sms_ = device_attribute(cudaDevAttrMultiProcessorCount, ctx.device());
    std::string why;
    if (!fused_device_supports(ctx, &why)) throw InternalError("fused optimize chunk: " + why);

    const size_t n = static_cast<size_t>(n_), nd = n * kD, nk = n * kK;
    const bool adam = cfg.optimizer == InputOptimizer::Adam;
    x_ = DeviceBuffer<float>(nd, "fused chunk: iterates");
    x0_ = DeviceBuffer<float>(nd, "fused chunk: start images");
    if (adam) {
      m_ = DeviceBuffer<float>(nd, "fused chunk: Adam m");
      v_ = DeviceBuffer<float>(nd, "fused chunk: Adam v");
    }
    target_ = DeviceBuffer<float>(nk, "fused chunk: targets");
    eps_ = DeviceBuffer<float>(n, "fused chunk: radii");
    kind_ = DeviceBuffer<int32_t>(n, "fused chunk: target kinds");
    cls_ = DeviceBuffer<int32_t>(n, "fused chunk: target classes");
    steps_done_ = DeviceBuffer<int32_t>(n, "fused chunk: step counts");
    goal_reached_ = DeviceBuffer<uint8_t>(n, "fused chunk: goal flags");
    best_loss_ = DeviceBuffer<float>(n, "fused chunk: best losses");
    best_probs_ = DeviceBuffer<float>(nk, "fused chunk: best probabilities");
    best_images_ = DeviceBuffer<float>(nd, "fused chunk: best images");
    success_step_ = DeviceBuffer<int32_t>(n, "fused chunk: success steps");
    if (cfg.early_stop) {
      rows_ = DeviceBuffer<int32_t>(n, "fused chunk: active list");
      rows_next_ = DeviceBuffer<int32_t>(n, "fused chunk: active list");
      keep_ = DeviceBuffer<uint8_t>(n, "fused chunk: keep flags");
      count_dev_ = DeviceBuffer<int32_t>(1, "fused chunk: active count");
      count_host_ = PinnedBuffer<int32_t>(1, "fused chunk: active count");
    }

    const cudaStream_t s = ctx_.stream();
    upload(x0_, in.start, nd, s);
    upload(x_, in.init ? in.init : in.start, nd, s);
    upload(target_, in.target_dist, nk, s);
    upload(kind_, in.target_kind, n, s);
    upload(cls_, in.target_class, n, s);
    if (in.eps) upload(eps_, in.eps, n, s);
    else CUDA_CHECK(cudaMemsetAsync(eps_.get(), 0, n * sizeof(float), s));
    if (adam) {
      CUDA_CHECK(cudaMemsetAsync(m_.get(), 0, nd * sizeof(float), s));
      CUDA_CHECK(cudaMemsetAsync(v_.get(), 0, nd * sizeof(float), s));
    }
    CUDA_CHECK(cudaMemsetAsync(steps_done_.get(), 0, n * sizeof(int32_t), s));
    CUDA_CHECK(cudaMemsetAsync(goal_reached_.get(), 0, n, s));
    CUDA_CHECK(cudaMemsetAsync(success_step_.get(), 0xFF, n * sizeof(int32_t), s));  // -1
    CUDA_CHECK(cudaMemsetAsync(best_probs_.get(), 0, nk * sizeof(float), s));
    CUDA_CHECK(cudaMemcpyAsync(best_images_.get(), x_.get(), nd * sizeof(float), cudaMemcpyDeviceToDevice, s));
    // Host staging for the values that have no memset must outlive the asynchronous copies: synchronize below.
    const std::vector<float> inf(n, INFINITY);
    upload(best_loss_, inf.data(), n, s);
    std::vector<int32_t> identity;
    if (cfg.early_stop) {
      identity.resize(n);
      std::iota(identity.begin(), identity.end(), 0);
      upload(rows_, identity.data(), n, s);
    }
    ctx_.synchronize();
  }

  ~FusedChunk() override {
    // Queued launches may still use the buffers. A destructor must not throw.
    cudaStreamSynchronize(ctx_.stream());
  }

  void step() override {
    if (finished_) throw InternalError("OptimizeChunk::step after finish");
    if (active_count_ == 0) return;
    if (++pending_ >= steps_per_launch_) {
      launch(pending_, false);
      pending_ = 0;
    }
  }

  int active_count() const override { return active_count_; }

  ChunkResult finish() override {
    if (finished_) throw InternalError("OptimizeChunk::finish called twice");
    finished_ = true;
    NvtxRange range("fused optimize finish");
    launch(pending_, true);  // the queued steps, then the evaluation of the final iterates
    pending_ = 0;
    active_count_ = 0;
    const cudaStream_t s = ctx_.stream();
    const size_t n = static_cast<size_t>(n_);
    ChunkResult r;
    download(r.best_images, best_images_, n * kD, s);
    download(r.best_probs, best_probs_, n * kK, s);
    download(r.best_loss, best_loss_, n, s);
    download(r.success_step, success_step_, n, s);
    download(r.updates, steps_done_, n, s);
    ctx_.synchronize();
    return r;
  }

 private:
  void launch(int steps, bool final_eval) {
    if (active_count_ == 0 || (steps == 0 && !final_eval)) return;
    NvtxRange range("fused optimize launch");
    const cudaStream_t s = ctx_.stream();
    FusedParams p;
    p.weights = weights_.get();
    p.rows = rows_identity_ ? nullptr : rows_.get();
    p.count = active_count_;
    p.tile = tile_ > 0 ? tile_ : std::clamp((active_count_ + sms_ - 1) / sms_, 1, kFusedTileMax);
    p.steps = steps;
    p.final_eval = final_eval;
    p.x = x_.get();
    p.x0 = x0_.get();
    p.m = m_.get();
    p.v = v_.get();
    p.target_dist = target_.get();
    p.target_kind = kind_.get();
    p.target_class = cls_.get();
    p.eps = eps_.get();
    p.steps_done = steps_done_.get();
    p.goal_reached = goal_reached_.get();
    p.best_loss = best_loss_.get();
    p.best_probs = best_probs_.get();
    p.best_images = best_images_.get();
    p.success_step = success_step_.get();
    const bool compact = cfg_.early_stop && steps > 0 && !final_eval;
    p.keep = compact ? keep_.get() : nullptr;
    p.loss = cfg_.loss;
    p.optimizer = cfg_.optimizer;
    p.norm = cfg_.norm;
    p.lr = cfg_.lr;
    p.beta1 = cfg_.beta1;
    p.beta2 = cfg_.beta2;
    p.adam_eps = cfg_.adam_eps;
    p.kappa = cfg_.cw_kappa;
    p.stop_prob = cfg_.stop_prob;
    p.stop_kl = cfg_.stop_kl;
    p.early_stop = cfg_.early_stop;
    fused_optimize_cuda(p, sms_, s);
    if (!compact) return;

    // rows_ holds the identity until the first entry stops, so it is a valid input list either way.
    compact_active_cuda(rows_.get(), keep_.get(), active_count_, rows_next_.get(), count_dev_.get(), s);
    CUDA_CHECK(cudaMemcpyAsync(count_host_.get(), count_dev_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, s));
    ctx_.synchronize();
    std::swap(rows_, rows_next_);
    if (*count_host_.get() != active_count_) rows_identity_ = false;
    active_count_ = *count_host_.get();
  }

  CudaContext& ctx_;
  StepConfig cfg_;
  int n_;
  int active_count_;
  int steps_per_launch_ = 1;
  int tile_ = 0;
  int sms_ = 1;
  int pending_ = 0;
  bool rows_identity_ = true;  // rows_ == 0..n-1: the kernel is given no list
  bool finished_ = false;
  DeviceBuffer<float> weights_;
  // By entry.
  DeviceBuffer<float> x_, x0_, m_, v_, target_, eps_, best_loss_, best_probs_, best_images_;
  DeviceBuffer<int32_t> kind_, cls_, steps_done_, success_step_;
  DeviceBuffer<uint8_t> goal_reached_;
  // The active list (early stopping only).
  DeviceBuffer<int32_t> rows_, rows_next_, count_dev_;
  DeviceBuffer<uint8_t> keep_;
  PinnedBuffer<int32_t> count_host_;
};

}  // namespace

bool fused_path_supports(const Architecture& arch) { return arch == Architecture::reference(); }

bool fused_device_supports(const CudaContext& ctx, std::string* why) {
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device());
  if (static_cast<size_t>(optin) >= fused_smem_bytes()) return true;
  if (why)
    *why = "the fused kernel needs " + format_bytes(fused_smem_bytes()) + " of shared memory per block; device " +
           std::to_string(ctx.device()) + " allows " + format_bytes(static_cast<size_t>(optin)) +
           " (use the layer-by-layer path)";
  return false;
}

size_t fused_chunk_bytes_per_entry(bool adam) {
  // x, x0, best image (+ m, v): D floats each; target and best probabilities: K each; eps, best loss; kind, class,
  // steps, success step, two active-list slots: ints; goal and keep flags: bytes.
  return sizeof(float) * (static_cast<size_t>(kD) * (adam ? 5 : 3) + 2 * kK + 2) + sizeof(int32_t) * 6 + 2;
}

std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk(CudaContext& ctx, const Architecture& arch,
                                                         const std::vector<const float*>& device_params,
                                                         const ChunkInput& in, const StepConfig& cfg,
                                                         const FusedChunkOptions& options) {
  if (!fused_path_supports(arch))
    throw InternalError("fused optimize chunk: the fused kernel is built for " +
                        std::string(Architecture::reference_string()) + " only, not " + arch.to_string());
  if (device_params.size() != static_cast<size_t>(kFusedParamTensors))
    throw InternalError("fused optimize chunk: expected " + std::to_string(kFusedParamTensors) +
                        " parameter tensors, got " + std::to_string(device_params.size()));
  check_input(in, cfg);
  FusedWeightSources src;
  for (int i = 0; i < kFusedParamTensors; ++i) src.tensor[i] = device_params[i];
  DeviceBuffer<float> packed(fused_packed_weight_count(), "fused chunk: packed weights");
  fused_pack_weights_cuda(src, packed.get(), ctx.stream());
  return std::make_unique<FusedChunk>(ctx, std::move(packed), in, cfg, options);
}

std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk(CudaContext& ctx, const Model& model, const ChunkInput& in,
                                                         const StepConfig& cfg, const FusedChunkOptions& options) {
  if (!fused_path_supports(model.arch))
    throw InternalError("fused optimize chunk: the fused kernel is built for " +
                        std::string(Architecture::reference_string()) + " only, not " + model.arch.to_string());
  const std::vector<ParamSpec> specs = model.arch.params();
  if (model.params.size() != specs.size())
    throw InputError("model has " + std::to_string(model.params.size()) + " tensors; its architecture needs " +
                     std::to_string(specs.size()));
  size_t total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (model.params[i].shape != specs[i].shape)
      throw InputError("tensor " + specs[i].name + " has shape " + shape_to_string(model.params[i].shape) +
                       ", the architecture needs " + shape_to_string(specs[i].shape));
    total += model.params[i].size();
  }
  DeviceBuffer<float> flat(total, "fused chunk: model parameters");
  std::vector<const float*> ptrs;
  size_t offset = 0;
  for (const Tensor& t : model.params) {
    CUDA_CHECK(cudaMemcpyAsync(flat.get() + offset, t.ptr(), t.size() * sizeof(float), cudaMemcpyHostToDevice,
                               ctx.stream()));
    ptrs.push_back(flat.get() + offset);
    offset += t.size();
  }
  auto chunk = make_fused_optimize_chunk(ctx, model.arch, ptrs, in, cfg, options);
  ctx.synchronize();  // the packing kernel has read `flat` before it is freed
  return chunk;
}

}  // namespace nudge::cuda
