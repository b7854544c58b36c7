#include "cuda/cuda_optimize_chunk.h"

#include <cmath>
#include <numeric>

#include "compact_active.cuh"
#include "cuda/cuda_check.h"
#include "cuda/cuda_context.h"
#include "cuda/nvtx.h"
#include "errors.h"
#include "gather_rows.cuh"
#include "input_step.cuh"
#include "optimize_track.cuh"
#include "softmax_loss.cuh"

namespace nudge::cuda {

namespace {

template <class T>
void upload(DeviceBuffer<T>& dst, const T* src, size_t count, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpyAsync(dst.get(), src, count * sizeof(T), cudaMemcpyHostToDevice, s));
}

template <class T>
void download(std::vector<T>& dst, const DeviceBuffer<T>& src, size_t count, cudaStream_t s) {
  dst.resize(count);
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.get(), count * sizeof(T), cudaMemcpyDeviceToHost, s));
}

}  // namespace

size_t CudaOptimizeChunk::bytes_per_entry(const Architecture& arch, bool adam) {
  const size_t D = arch.input.size(), K = arch.num_classes();
  // x, x0, best image, gathered batch, input gradient (+ m, v): D floats each; targets, probs, dlogits: K each.
  const size_t floats = D * (5 + (adam ? 2 : 0)) + K * 4 + 4;
  return floats * sizeof(float) + 6 * sizeof(int32_t) + 2 + CudaNetwork::bytes_per_image(arch);
}

CudaOptimizeChunk::CudaOptimizeChunk(CudaContext& ctx, const Architecture& arch, std::vector<const float*> params,
                                     const ChunkInput& in, const StepConfig& cfg)
    : ctx_(ctx),
      cfg_(cfg),
      params_(std::move(params)),
      n_(in.n),
      D_(arch.input.size()),
      K_(arch.num_classes()),
      active_count_(in.n),
      net_(ctx, arch) {
  if (in.n <= 0) throw InternalError("begin_optimize: a chunk needs at least one entry");
  if (!in.start || !in.target_dist || !in.target_kind || !in.target_class)
    throw InternalError("begin_optimize: start, target_dist, target_kind and target_class are required");
  if (cfg.norm != Norm::None && !in.eps) throw InternalError("begin_optimize: a norm ball needs eps");
  const size_t n = static_cast<size_t>(n_), nd = n * D_, nk = n * K_;
  const bool adam = cfg.optimizer == InputOptimizer::Adam;
  // Everything is allocated here, before any work is queued, so running out of memory leaves nothing half done.
  net_.reserve(n_);
  x_ = DeviceBuffer<float>(nd, "optimize chunk: iterates");
  x0_ = DeviceBuffer<float>(nd, "optimize chunk: start images");
  if (adam) {
    m_ = DeviceBuffer<float>(nd, "optimize chunk: Adam m");
    v_ = DeviceBuffer<float>(nd, "optimize chunk: Adam v");
  }
  target_ = DeviceBuffer<float>(nk, "optimize chunk: targets");
  eps_ = DeviceBuffer<float>(n, "optimize chunk: radii");
  best_images_ = DeviceBuffer<float>(nd, "optimize chunk: best images");
  best_probs_ = DeviceBuffer<float>(nk, "optimize chunk: best probabilities");
  best_loss_ = DeviceBuffer<float>(n, "optimize chunk: best losses");
  kind_ = DeviceBuffer<int32_t>(n, "optimize chunk: target kinds");
  cls_ = DeviceBuffer<int32_t>(n, "optimize chunk: target classes");
  steps_done_ = DeviceBuffer<int32_t>(n, "optimize chunk: step counts");
  success_step_ = DeviceBuffer<int32_t>(n, "optimize chunk: success steps");
  goal_reached_ = DeviceBuffer<uint8_t>(n, "optimize chunk: goal flags");
  active_ = DeviceBuffer<int32_t>(n, "optimize chunk: active list");
  active_next_ = DeviceBuffer<int32_t>(n, "optimize chunk: active list");
  count_dev_ = DeviceBuffer<int32_t>(1, "optimize chunk: active count");
  keep_ = DeviceBuffer<uint8_t>(n, "optimize chunk: keep flags");
  if (cfg.early_stop) batch_x_ = DeviceBuffer<float>(nd, "optimize chunk: gathered batch");
  grad_ = DeviceBuffer<float>(nd, "optimize chunk: input gradients");
  probs_ = DeviceBuffer<float>(nk, "optimize chunk: probabilities");
  loss_ = DeviceBuffer<float>(n, "optimize chunk: losses");
  dlogits_ = DeviceBuffer<float>(nk, "optimize chunk: logit gradients");
  count_host_ = PinnedBuffer<int32_t>(1, "optimize chunk: active count");

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
  CUDA_CHECK(cudaMemsetAsync(success_step_.get(), 0xFF, n * sizeof(int32_t), s));  // -1
  CUDA_CHECK(cudaMemsetAsync(goal_reached_.get(), 0, n, s));
  CUDA_CHECK(cudaMemsetAsync(best_probs_.get(), 0, nk * sizeof(float), s));
  CUDA_CHECK(cudaMemcpyAsync(best_images_.get(), x_.get(), nd * sizeof(float), cudaMemcpyDeviceToDevice, s));
  // Host staging for the few values that have no memset: they must outlive the asynchronous copies, so wait.
  const std::vector<float> inf(n, INFINITY);
  std::vector<int32_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  upload(best_loss_, inf.data(), n, s);
  upload(active_, identity.data(), n, s);
  ctx_.synchronize();
}

CudaOptimizeChunk::~CudaOptimizeChunk() {
  // Queued steps may still use the buffers; cudaFree would wait too, but say so. A destructor must not throw.
  cudaStreamSynchronize(ctx_.stream());
}

void CudaOptimizeChunk::evaluate_and_update(bool update) {
  const int count = active_count_;
  if (count == 0) return;
  const cudaStream_t s = ctx_.stream();
  const float* batch = x_.get();
  if (!active_is_identity_) {
    gather_rows_cuda(x_.get(), active_.get(), count, D_, batch_x_.get(), s);
    batch = batch_x_.get();
  }
  net_.forward(params_, batch, count);

  SoftmaxLossParams lp;
  lp.logits = net_.logits();
  lp.rows = count;
  lp.K = K_;
  lp.entry = active_.get();
  lp.target_dist = target_.get();
  lp.target_kind = kind_.get();
  lp.target_class = cls_.get();
  lp.loss = cfg_.loss;
  lp.kappa = cfg_.cw_kappa;
  lp.probs = probs_.get();
  lp.loss_out = loss_.get();
  lp.dlogits = update ? dlogits_.get() : nullptr;
  softmax_loss_cuda(lp, s);

  TrackParams tp;
  tp.rows = count;
  tp.K = K_;
  tp.D = D_;
  tp.entry = active_.get();
  tp.probs = probs_.get();
  tp.loss = loss_.get();
  tp.x = x_.get();
  tp.target_dist = target_.get();
  tp.target_kind = kind_.get();
  tp.target_class = cls_.get();
  tp.steps_done = steps_done_.get();
  tp.stop_prob = cfg_.stop_prob;
  tp.stop_kl = cfg_.stop_kl;
  tp.early_stop = cfg_.early_stop;
  tp.goal_reached = goal_reached_.get();
  tp.best_loss = best_loss_.get();
  tp.best_probs = best_probs_.get();
  tp.best_images = best_images_.get();
  tp.success_step = success_step_.get();
  tp.keep = keep_.get();
  optimize_track_cuda(tp, s);

  if (!update) return;
  net_.backward(params_, dlogits_.get(), count, nullptr, grad_.get());

  InputStepParams sp;
  sp.rows = count;
  sp.D = D_;
  sp.entry = active_.get();
  sp.keep = keep_.get();
  sp.grad = grad_.get();
  sp.x = x_.get();
  sp.x0 = x0_.get();
  sp.m = m_.get();
  sp.v = v_.get();
  sp.steps_done = steps_done_.get();
  sp.eps = eps_.get();
  sp.optimizer = cfg_.optimizer;
  sp.norm = cfg_.norm;
  sp.lr = cfg_.lr;
  sp.beta1 = cfg_.beta1;
  sp.beta2 = cfg_.beta2;
  sp.adam_eps = cfg_.adam_eps;
  input_step_cuda(sp, s);

  if (!cfg_.early_stop) return;  // nothing ever stops: the active list stays 0..n-1
  compact_active_cuda(active_.get(), keep_.get(), count, active_next_.get(), count_dev_.get(), s);
  CUDA_CHECK(cudaMemcpyAsync(count_host_.get(), count_dev_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  ctx_.synchronize();
  std::swap(active_, active_next_);
  if (*count_host_.get() != active_count_) active_is_identity_ = false;
  active_count_ = *count_host_.get();
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
  const cudaStream_t s = ctx_.stream();
  const size_t n = static_cast<size_t>(n_);
  ChunkResult r;
  download(r.best_images, best_images_, n * D_, s);
  download(r.best_probs, best_probs_, n * K_, s);
  download(r.best_loss, best_loss_, n, s);
  download(r.success_step, success_step_, n, s);
  download(r.updates, steps_done_, n, s);
  ctx_.synchronize();
  return r;
}

}  // namespace nudge::cuda
