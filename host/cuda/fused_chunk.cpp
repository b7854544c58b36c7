#include "fused_chunk.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "chunk_params.h"
#include "chunk_state.h"
#include "cuda_check.h"
#include "cuda_context.h"
#include "device_memory.h"
#include "nvtx.h"
#include "errors.h"
#include "fused_optimize.cuh"

namespace nudge::cuda {

namespace {

constexpr int kD = 28 * 28, kK = 10;
// Without early stopping nothing needs the host between steps, so steps are batched; 8 makes the per-launch costs
// (launch, staging conv1/conv2, the tail of the last wave of tiles) small next to the steps' work.
constexpr int kStepsPerLaunchFree = 8;

void check_input(const ChunkInput& in) {
  if (in.n <= 0 || !in.target_kind || !in.target_class)
    throw InternalError("fused optimize chunk: a chunk needs entries with target kinds and classes");
  // The kernel indexes the logits with the class; validate_job refuses a bad one, this asserts it.
  for (int i = 0; i < in.n; ++i) {
    const int32_t kind = in.target_kind[i];
    if (kind < 0 || kind > static_cast<int32_t>(TargetKind::Untargeted))
      throw InternalError("optimize: entry " + std::to_string(i) + " has an unknown target kind " + std::to_string(kind));
    if (static_cast<TargetKind>(kind) != TargetKind::Soft && (in.target_class[i] < 0 || in.target_class[i] >= kK))
      throw InternalError("optimize: entry " + std::to_string(i) + " has class " + std::to_string(in.target_class[i]) +
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
  // weights: packed (fused_pack_weights_cuda) on ctx's stream; `owned` holds them when the chunk owns them.
  FusedChunk(CudaContext& ctx, const float* weights, DeviceBuffer<float> owned, const ChunkInput& in,
             const StepConfig& cfg, const FusedChunkOptions& options)
      : ctx_(ctx),
        cfg_(cfg),
        active_count_(in.n),
        owned_weights_(std::move(owned)),
        weights_(weights),
        st_(in, cfg, kD, kK, cfg.early_stop, "fused chunk", ctx.chunk_pool()) {
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
    st_.upload(ctx_, in);  // last: a chunk refused for memory has copied nothing
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
    st_.before_compute(ctx_.stream());
    return st_.download(ctx_.stream());
  }

  std::string path() const override { return "fused"; }

 private:
  void launch(int steps, bool final_eval) {
    if (active_count_ == 0 || (steps == 0 && !final_eval)) return;
    NvtxRange range("fused optimize launch");
    const cudaStream_t s = ctx_.stream();
    st_.before_compute(s);
    FusedParams p = fused_params(st_.arrays(), cfg_, weights_);
    p.rows = rows_identity_ ? nullptr : st_.active.get();
    p.count = active_count_;
    p.tile = tile_ > 0 ? tile_ : std::clamp((active_count_ + sms_ - 1) / sms_, 1, kFusedTileMax);
    p.steps = steps;
    p.final_eval = final_eval;
    const bool compact = cfg_.early_stop && steps > 0 && !final_eval;
    p.keep = compact ? st_.keep.get() : nullptr;
    fused_optimize_cuda(p, sms_, s);
    if (!compact) return;

    // rows_ holds the identity until the first entry stops, so it is a valid input list either way.
    const int kept = st_.compact_active(ctx_, active_count_, s);
    if (kept != active_count_) rows_identity_ = false;
    active_count_ = kept;
  }

  CudaContext& ctx_;
  StepConfig cfg_;
  int active_count_;
  int steps_per_launch_ = 1;
  int tile_ = 0;
  int sms_ = 1;
  int pending_ = 0;
  bool rows_identity_ = true;  // rows_ == 0..n-1: the kernel is given no list
  bool finished_ = false;
  DeviceBuffer<float> owned_weights_;  // empty when the weights are the backend's (packed once per load_model)
  const float* weights_;
  ChunkState st_;  // with the active list only when early stopping
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
  // The activations live in shared memory: a chunk is its state alone (with the active list, the larger case).
  return ChunkState::bytes_per_entry(kD, kK, adam, true);
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
  check_input(in);
  DeviceBuffer<float> packed = pack_fused_weights(ctx, device_params);
  const float* w = packed.get();
  return std::make_unique<FusedChunk>(ctx, w, std::move(packed), in, cfg, options);
}

DeviceBuffer<float> pack_fused_weights(CudaContext& ctx, const std::vector<const float*>& device_params) {
  if (device_params.size() != static_cast<size_t>(kFusedParamTensors))
    throw InternalError("fused optimize chunk: expected " + std::to_string(kFusedParamTensors) +
                        " parameter tensors, got " + std::to_string(device_params.size()));
  FusedWeightSources src;
  for (int i = 0; i < kFusedParamTensors; ++i) src.tensor[i] = device_params[i];
  DeviceBuffer<float> packed(fused_packed_weight_count(), "fused chunk: packed weights");
  fused_pack_weights_cuda(src, packed.get(), ctx.stream());
  return packed;
}

std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk_packed(CudaContext& ctx, const float* packed_weights,
                                                                const ChunkInput& in, const StepConfig& cfg,
                                                                const FusedChunkOptions& options) {
  if (!packed_weights) throw InternalError("fused optimize chunk: no packed weights");
  check_input(in);
  return std::make_unique<FusedChunk>(ctx, packed_weights, DeviceBuffer<float>(), in, cfg, options);
}

std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk(CudaContext& ctx, const Model& model, const ChunkInput& in,
                                                         const StepConfig& cfg, const FusedChunkOptions& options) {
  if (!fused_path_supports(model.arch))
    throw InternalError("fused optimize chunk: the fused kernel is built for " +
                        std::string(Architecture::reference_string()) + " only, not " + model.arch.to_string());
  assert_params_match_architecture(model, "fused optimize chunk");
  size_t total = 0;
  for (const Tensor& t : model.params) total += t.size();
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
