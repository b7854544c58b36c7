#include "cuda_optimize_chunk.h"

#include "chunk_params.h"
#include "cuda_check.h"
#include "cuda_context.h"
#include "nvtx.h"
#include "errors.h"
#include "gather_rows.cuh"
#include "input_step.cuh"
#include "optimize_track.cuh"
#include "row_argmax.cuh"
#include "softmax_loss.cuh"

namespace nudge::cuda {

size_t CudaOptimizeChunk::bytes_per_entry(const Architecture& arch, bool adam) {
  const size_t D = arch.input.size(), K = arch.num_classes();
  // The state, plus per batch row: gathered image and input gradient (D floats each); probabilities and logit
  // gradients (K each); the loss.
  return ChunkState::bytes_per_entry(static_cast<int>(D), static_cast<int>(K), adam, true) +
         sizeof(float) * (2 * D + 2 * K + 1) + CudaNetwork::bytes_per_image(arch);
}

CudaOptimizeChunk::CudaOptimizeChunk(CudaContext& ctx, const Architecture& arch, std::vector<const float*> params,
                                     const ChunkInput& in, const StepConfig& cfg)
    : ctx_(ctx),
      cfg_(cfg),
      params_(std::move(params)),
      D_(arch.input.size()),
      K_(arch.num_classes()),
      active_count_(in.n),
      net_(ctx, arch, &ctx.chunk_pool()),
      st_(in, cfg, arch.input.size(), arch.num_classes(), true, "optimize chunk", ctx.chunk_pool()) {
  const size_t n = static_cast<size_t>(in.n), nd = n * D_, nk = n * K_;
  // Everything is allocated here, before the first step, so running out of memory leaves nothing half done.
  net_.reserve(in.n);
  ReusePool& pool = ctx.chunk_pool();
  if (cfg.early_stop) batch_x_ = DeviceBuffer<float>(nd, "optimize chunk: gathered batch", pool);
  grad_ = DeviceBuffer<float>(nd, "optimize chunk: input gradients", pool);
  probs_ = DeviceBuffer<float>(nk, "optimize chunk: probabilities", pool);
  loss_ = DeviceBuffer<float>(n, "optimize chunk: losses", pool);
  dlogits_ = DeviceBuffer<float>(nk, "optimize chunk: logit gradients", pool);
  st_.upload(ctx_, in);  // last: a chunk refused for memory has copied nothing
}

CudaOptimizeChunk::~CudaOptimizeChunk() {
  // Queued steps may still use the buffers; cudaFree would wait too, but say so. A destructor must not throw.
  cudaStreamSynchronize(ctx_.stream());
}

void CudaOptimizeChunk::evaluate_and_update(bool update) {
  const int count = active_count_;
  if (count == 0) return;
  const cudaStream_t s = ctx_.stream();
  st_.before_compute(s);
  const float* batch = st_.x.get();
  if (!active_is_identity_) {
    gather_rows_cuda(st_.x.get(), st_.active.get(), count, D_, batch_x_.get(), s);
    batch = batch_x_.get();
  }
  net_.forward(params_, batch, count);

  const ChunkArrays arrays = st_.arrays();
  const SoftmaxLossParams lp = chunk_loss_params(arrays, cfg_, st_.active.get(), count, K_, net_.logits(), probs_.get(),
                                                 loss_.get(), update ? dlogits_.get() : nullptr);
  softmax_loss_cuda(lp, s);
  if (!first_evaluated_ && st_.start_class.get()) {
    // The first evaluation is of every entry's first iterate, its start image (no init): its classes are the
    // report's start classes. count == n and the active list is the identity here.
    row_argmax_cuda(probs_.get(), count, K_, nullptr, st_.start_class.get(), s);
  }
  first_evaluated_ = true;

  optimize_track_cuda(chunk_track_params(arrays, cfg_, st_.active.get(), count, K_, D_, probs_.get(), loss_.get(),
                                         st_.keep.get()),
                      s);

  if (!update) return;
  net_.backward(params_, dlogits_.get(), count, nullptr, grad_.get());

  input_step_cuda(chunk_input_step_params(arrays, cfg_, st_.active.get(), count, D_, grad_.get(), st_.keep.get()), s);

  if (!cfg_.early_stop) return;  // nothing ever stops: the active list stays 0..n-1
  const int kept = st_.compact_active(ctx_, count, s);
  if (kept != active_count_) active_is_identity_ = false;
  active_count_ = kept;
}

void CudaOptimizeChunk::step() {
  if (finished_) throw InternalError("OptimizeChunk::step after finish");
  NvtxRange range("optimize step");
  evaluate_and_update(true);
}

ChunkResult CudaOptimizeChunk::finish() {
  if (finished_) throw InternalError("OptimizeChunk::finish called twice");
  NvtxRange range("optimize finish");
  evaluate_and_update(false);
  finished_ = true;
  active_count_ = 0;
  st_.before_compute(ctx_.stream());
  return st_.download(ctx_.stream());
}

}  // namespace nudge::cuda
