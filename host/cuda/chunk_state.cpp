#include "cuda/chunk_state.h"

#include <cmath>
#include <numeric>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cuda_context.h"
#include "cuda/staged_upload.h"
#include "errors.h"

namespace nudge::cuda {

namespace {

template <class T>
void download_into(std::vector<T>& dst, const DeviceBuffer<T>& src, size_t count, cudaStream_t s) {
  dst.resize(count);
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.get(), count * sizeof(T), cudaMemcpyDeviceToHost, s));
}

}  // namespace

size_t ChunkState::bytes_per_entry(int D, int K, bool adam, bool active_list) {
  // x, x0, best image (+ m, v): D floats each; target, best probabilities: K each; eps, best loss; kind, class,
  // steps, success step (+ two active-list slots): ints; goal (+ keep) flags: bytes.
  return sizeof(float) * (static_cast<size_t>(D) * (adam ? 5 : 3) + 2 * static_cast<size_t>(K) + 2) +
         sizeof(int32_t) * (4 + (active_list ? 2 : 0)) + 1 + (active_list ? 1 : 0);
}

ChunkState::ChunkState(const ChunkInput& in, const StepConfig& cfg, int D_, int K_, bool active_list,
                       const std::string& owner)
    : n(in.n), D(D_), K(K_), adam_(cfg.optimizer == InputOptimizer::Adam), active_list_(active_list) {
  if (in.n <= 0) throw InternalError(owner + ": a chunk needs at least one entry");
  if (!in.start || !in.target_dist || !in.target_kind || !in.target_class)
    throw InternalError(owner + ": start, target_dist, target_kind and target_class are required");
  if (cfg.norm != Norm::None && !in.eps) throw InternalError(owner + ": a norm ball needs eps");
  const size_t N = static_cast<size_t>(n), nd = N * D, nk = N * K;
  const bool adam = adam_;
  auto name = [&](const char* what) { return owner + ": " + what; };
  // Everything is allocated before anything is queued, so running out of memory leaves nothing half done.
  x = DeviceBuffer<float>(nd, name("iterates").c_str());
  x0 = DeviceBuffer<float>(nd, name("start images").c_str());
  if (adam) {
    m = DeviceBuffer<float>(nd, name("Adam m").c_str());
    v = DeviceBuffer<float>(nd, name("Adam v").c_str());
  }
  target = DeviceBuffer<float>(nk, name("targets").c_str());
  eps = DeviceBuffer<float>(N, name("radii").c_str());
  best_images = DeviceBuffer<float>(nd, name("best images").c_str());
  best_probs = DeviceBuffer<float>(nk, name("best probabilities").c_str());
  best_loss = DeviceBuffer<float>(N, name("best losses").c_str());
  kind = DeviceBuffer<int32_t>(N, name("target kinds").c_str());
  cls = DeviceBuffer<int32_t>(N, name("target classes").c_str());
  steps_done = DeviceBuffer<int32_t>(N, name("step counts").c_str());
  success_step = DeviceBuffer<int32_t>(N, name("success steps").c_str());
  goal_reached = DeviceBuffer<uint8_t>(N, name("goal flags").c_str());
  if (active_list) {
    active = DeviceBuffer<int32_t>(N, name("active list").c_str());
    active_next = DeviceBuffer<int32_t>(N, name("active list").c_str());
    count_dev = DeviceBuffer<int32_t>(1, name("active count").c_str());
    keep = DeviceBuffer<uint8_t>(N, name("keep flags").c_str());
  }
  // Blocking sync: a waiting host thread yields its core to the engine's other threads instead of spinning.
  CUDA_CHECK(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming | cudaEventBlockingSync));
}

void ChunkState::upload(CudaContext& ctx, const ChunkInput& in) {
  if (uploading_) throw InternalError("ChunkState::upload called twice");
  if (in.n != n) throw InternalError("ChunkState::upload: the chunk was made for other entries");
  ctx.uploader().reserve();
  uploading_ = true;
  staged_ = ctx.upload_worker().submit([this, &ctx, in] {
    // The runtime's current device is per host thread.
    CUDA_CHECK(cudaSetDevice(ctx.device()));
    try {
      queue_upload(ctx, in);
    } catch (...) {
      // Nothing queued may still write into the buffers once the failure is reported.
      cudaStreamSynchronize(ctx.copy_stream());
      throw;
    }
  });
}

void ChunkState::queue_upload(CudaContext& ctx, const ChunkInput& in) {
  const bool adam = adam_, active_list = active_list_;
  const size_t N = static_cast<size_t>(n), nd = N * D, nk = N * K;
  // All on the copy stream, in this order: the device-to-device copies below read what the uploads wrote.
  StagedUploader& up = ctx.uploader();
  const cudaStream_t s = up.stream();
  up.copy(x0.get(), in.start, nd * sizeof(float));
  if (in.init) up.copy(x.get(), in.init, nd * sizeof(float));
  else CUDA_CHECK(cudaMemcpyAsync(x.get(), x0.get(), nd * sizeof(float), cudaMemcpyDeviceToDevice, s));
  up.copy(target.get(), in.target_dist, nk * sizeof(float));
  up.copy(kind.get(), in.target_kind, N * sizeof(int32_t));
  up.copy(cls.get(), in.target_class, N * sizeof(int32_t));
  if (in.eps) up.copy(eps.get(), in.eps, N * sizeof(float));
  else CUDA_CHECK(cudaMemsetAsync(eps.get(), 0, N * sizeof(float), s));
  if (adam) {
    CUDA_CHECK(cudaMemsetAsync(m.get(), 0, nd * sizeof(float), s));
    CUDA_CHECK(cudaMemsetAsync(v.get(), 0, nd * sizeof(float), s));
  }
  CUDA_CHECK(cudaMemsetAsync(steps_done.get(), 0, N * sizeof(int32_t), s));
  CUDA_CHECK(cudaMemsetAsync(success_step.get(), 0xFF, N * sizeof(int32_t), s));  // -1
  CUDA_CHECK(cudaMemsetAsync(goal_reached.get(), 0, N, s));
  CUDA_CHECK(cudaMemsetAsync(best_probs.get(), 0, nk * sizeof(float), s));
  CUDA_CHECK(cudaMemcpyAsync(best_images.get(), x.get(), nd * sizeof(float), cudaMemcpyDeviceToDevice, s));
  // Values without a memset pattern go through the staging too, so these host vectors may die right away.
  const std::vector<float> inf(N, INFINITY);
  up.copy(best_loss.get(), inf.data(), N * sizeof(float));
  if (active_list) {
    std::vector<int32_t> identity(N);
    std::iota(identity.begin(), identity.end(), 0);
    up.copy(active.get(), identity.data(), N * sizeof(int32_t));
  }
  CUDA_CHECK(cudaEventRecord(uploaded_, s));
  sync_if_debug("optimize chunk upload", s);
}

ChunkState::~ChunkState() {
  // The upload thread may still be staging, and the copies may still be writing into the buffers freed after this
  // body (a never-recorded event counts as complete). A destructor must not throw.
  if (staged_.valid()) staged_.wait();
  if (uploaded_) {
    cudaEventSynchronize(uploaded_);
    cudaEventDestroy(uploaded_);
  }
}

void ChunkState::before_compute(cudaStream_t stream) {
  if (waited_) return;
  if (!uploading_) throw InternalError("ChunkState: compute before upload");
  if (failed_) throw InternalError("ChunkState: the chunk's upload failed earlier");
  try {
    staged_.get();  // rethrows the upload thread's error
  } catch (...) {
    failed_ = true;
    throw;
  }
  CUDA_CHECK(cudaStreamWaitEvent(stream, uploaded_, 0));
  waited_ = true;
}

ChunkResult ChunkState::download(cudaStream_t s) const {
  const size_t N = static_cast<size_t>(n);
  ChunkResult r;
  download_into(r.best_images, best_images, N * D, s);
  download_into(r.best_probs, best_probs, N * K, s);
  download_into(r.best_loss, best_loss, N, s);
  download_into(r.success_step, success_step, N, s);
  download_into(r.updates, steps_done, N, s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  return r;
}

}  // namespace nudge::cuda
