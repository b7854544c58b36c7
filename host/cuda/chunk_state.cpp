#include "chunk_state.h"

#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "compact_active.cuh"
#include "cuda_check.h"
#include "cuda_context.h"
#include "staged_upload.h"
#include "errors.h"
#include "noise.cuh"

namespace nudge::cuda {

namespace {

template <class T>
void download_into(std::vector<T>& dst, const DeviceBuffer<T>& src, size_t count, cudaStream_t s) {
  dst.resize(count);
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.get(), count * sizeof(T), cudaMemcpyDeviceToHost, s));
}

}  // namespace

size_t ChunkState::bytes_per_entry(int D, int K, bool adam, bool active_list) {
  // chunk_state_buffers() for one entry, with the start classes (the larger case), less the active count.
  size_t bytes = 0;
  for (const ChunkBuffer& b : chunk_state_buffers(1, D, K, adam, active_list, true)) bytes += b.bytes;
  return bytes - (active_list ? sizeof(int32_t) : 0);
}

ChunkState::ChunkState(const ChunkInput& in, const StepConfig& cfg, int D_, int K_, bool active_list,
                       const std::string& owner, DeviceAllocator& from)
    : n(in.n), D(D_), K(K_), adam_(cfg.optimizer == InputOptimizer::Adam), active_list_(active_list) {
  if (in.n <= 0) throw InternalError(owner + ": a chunk needs at least one entry");
  if (!in.start || !in.target_dist || !in.target_kind || !in.target_class)
    throw InternalError(owner + ": start, target_dist, target_kind and target_class are required");
  if (cfg.norm != Norm::None && !in.eps) throw InternalError(owner + ": a norm ball needs eps");
  const size_t N = static_cast<size_t>(n), nd = N * D, nk = N * K;
  const bool adam = adam_;
  auto name = [&](const char* what) { return owner + ": " + what; };
  // Everything is allocated before anything is queued, so running out of memory leaves nothing half done.
  x = DeviceBuffer<float>(nd, name("iterates").c_str(), from);
  x0 = DeviceBuffer<float>(nd, name("start images").c_str(), from);
  if (adam) {
    m = DeviceBuffer<float>(nd, name("Adam m").c_str(), from);
    v = DeviceBuffer<float>(nd, name("Adam v").c_str(), from);
  }
  target = DeviceBuffer<float>(nk, name("targets").c_str(), from);
  eps = DeviceBuffer<float>(N, name("radii").c_str(), from);
  best_images = DeviceBuffer<float>(nd, name("best images").c_str(), from);
  best_probs = DeviceBuffer<float>(nk, name("best probabilities").c_str(), from);
  best_loss = DeviceBuffer<float>(N, name("best losses").c_str(), from);
  kind = DeviceBuffer<int32_t>(N, name("target kinds").c_str(), from);
  cls = DeviceBuffer<int32_t>(N, name("target classes").c_str(), from);
  steps_done = DeviceBuffer<int32_t>(N, name("step counts").c_str(), from);
  success_step = DeviceBuffer<int32_t>(N, name("success steps").c_str(), from);
  goal_reached = DeviceBuffer<uint8_t>(N, name("goal flags").c_str(), from);
  if (active_list) {
    active = DeviceBuffer<int32_t>(N, name("active list").c_str(), from);
    active_next = DeviceBuffer<int32_t>(N, name("active list").c_str(), from);
    count_dev = DeviceBuffer<int32_t>(1, name("active count").c_str(), from);
    keep = DeviceBuffer<uint8_t>(N, name("keep flags").c_str(), from);
  }
  if (!in.init) start_class = DeviceBuffer<int32_t>(N, name("start classes").c_str(), from);
  // The buffers above are the plan's (host/core/chunk_device_plan.h), which the tests without a GPU count.
  size_t planned = 0, made = x.bytes() + x0.bytes() + m.bytes() + v.bytes() + target.bytes() + eps.bytes() +
                            best_images.bytes() + best_probs.bytes() + best_loss.bytes() + kind.bytes() + cls.bytes() +
                            steps_done.bytes() + success_step.bytes() + goal_reached.bytes() + active.bytes() +
                            active_next.bytes() + count_dev.bytes() + keep.bytes() + start_class.bytes();
  for (const ChunkBuffer& b : chunk_state_buffers(n, D, K, adam, active_list, !in.init)) planned += b.bytes;
  if (planned != made)
    throw InternalError(owner + ": the chunk's buffers (" + std::to_string(made) +
                        " bytes) differ from chunk_state_buffers (" + std::to_string(planned) + ")");
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
  size_t copied = 0;
  auto copy = [&](void* dst, const void* src, size_t bytes) {
    up.copy(dst, src, bytes);
    copied += bytes;
  };
  if (in.generated.kind != GeneratedStarts::Kind::None) {
    // Made here, on the copy stream, bit for bit what the host made into in.start: no upload.
    EntryStarts es;
    es.gray = in.generated.kind == GeneratedStarts::Kind::Gray;
    es.gray_value = in.generated.gray;
    es.seed = in.generated.seed;
    es.first_row = in.generated.first_row;
    es.entries_per_row = in.generated.entries_per_row;
    es.rows_per_source = in.generated.rows_per_source;
    entry_start_images_cuda(x0.get(), n, D, es, s);
  } else {
    copy(x0.get(), in.start, nd * sizeof(float));
  }
  if (in.init) copy(x.get(), in.init, nd * sizeof(float));
  else CUDA_CHECK(cudaMemcpyAsync(x.get(), x0.get(), nd * sizeof(float), cudaMemcpyDeviceToDevice, s));
  copy(target.get(), in.target_dist, nk * sizeof(float));
  copy(kind.get(), in.target_kind, N * sizeof(int32_t));
  copy(cls.get(), in.target_class, N * sizeof(int32_t));
  if (in.eps) copy(eps.get(), in.eps, N * sizeof(float));
  else CUDA_CHECK(cudaMemsetAsync(eps.get(), 0, N * sizeof(float), s));
  if (adam) {
    CUDA_CHECK(cudaMemsetAsync(m.get(), 0, nd * sizeof(float), s));
    CUDA_CHECK(cudaMemsetAsync(v.get(), 0, nd * sizeof(float), s));
  }
  CUDA_CHECK(cudaMemsetAsync(steps_done.get(), 0, N * sizeof(int32_t), s));
  CUDA_CHECK(cudaMemsetAsync(success_step.get(), 0xFF, N * sizeof(int32_t), s));  // -1
  CUDA_CHECK(cudaMemsetAsync(goal_reached.get(), 0, N, s));
  if (start_class.get()) CUDA_CHECK(cudaMemsetAsync(start_class.get(), 0xFF, N * sizeof(int32_t), s));  // -1
  CUDA_CHECK(cudaMemsetAsync(best_probs.get(), 0, nk * sizeof(float), s));
  CUDA_CHECK(cudaMemcpyAsync(best_images.get(), x.get(), nd * sizeof(float), cudaMemcpyDeviceToDevice, s));
  // Values without a memset pattern go through the staging too, so these host vectors may die right away.
  const std::vector<float> inf(N, INFINITY);
  copy(best_loss.get(), inf.data(), N * sizeof(float));
  if (active_list) {
    std::vector<int32_t> identity(N);
    std::iota(identity.begin(), identity.end(), 0);
    copy(active.get(), identity.data(), N * sizeof(int32_t));
  }
  // What the tests without a GPU count (chunk_upload_bytes) is what was copied.
  if (copied != chunk_upload_bytes(in, D, K, active_list).total)
    throw InternalError("optimize chunk upload: copied " + std::to_string(copied) + " bytes, chunk_upload_bytes says " +
                        std::to_string(chunk_upload_bytes(in, D, K, active_list).total));
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
  if (start_class.get()) download_into(r.start_class, start_class, N, s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  return r;
}

int ChunkState::compact_active(CudaContext& ctx, int count, cudaStream_t stream) {
  compact_active_cuda(active.get(), keep.get(), count, active_next.get(), count_dev.get(), stream);
  CUDA_CHECK(cudaMemcpyAsync(ctx.readback_slot(), count_dev.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  ctx.synchronize();
  std::swap(active, active_next);
  return *ctx.readback_slot();
}

ChunkArrays ChunkState::arrays() const {
  ChunkArrays a;
  a.x = x.get();
  a.x0 = x0.get();
  a.m = m.get();
  a.v = v.get();
  a.target_dist = target.get();
  a.target_kind = kind.get();
  a.target_class = cls.get();
  a.eps = eps.get();
  a.steps_done = steps_done.get();
  a.goal_reached = goal_reached.get();
  a.best_loss = best_loss.get();
  a.best_probs = best_probs.get();
  a.best_images = best_images.get();
  a.success_step = success_step.get();
  a.start_class = start_class.get();
  return a;
}

}  // namespace nudge::cuda
