// The per-entry state of an optimize chunk on the GPU, shared by both chunk implementations (cuda_optimize_chunk.h,
// layer by layer; fused_chunk.h, the fused kernel): the iterates and their starts, Adam's moments, targets, radii,
// step counts, goal flags, the best iterate so far, and optionally the active list for early stopping.
//
// Construction allocates everything (DeviceOutOfMemory, see device_memory.h). upload() then hands the staging of
// the chunk's inputs to the context's upload thread, which copies them through pinned slots and queues them, with
// the initial values, on the copy stream (staged_upload.h). A chunk calls upload() last in its constructor, after
// its own allocations, so a chunk refused for memory has copied nothing. upload() returns at once: a chunk begun
// before another one steps is staged and copied while that one computes, even when each of its steps waits for the
// device (early stopping). Before the first kernel that reads the state, call before_compute(stream): it waits for
// the staging to be queued (once) and makes the stream wait for the copies.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <future>
#include <string>

#include "backend.h"
#include "chunk_params.h"
#include "device_memory.h"

namespace nudge::cuda {

class CudaContext;

class ChunkState {
 public:
  // owner names the buffers in out-of-memory messages ("optimize chunk", "fused chunk"). active_list: allocate the
  // active list (identity at first) and keep flags.
  // Buffers come from `from` (the context's chunk_pool()), exactly those of chunk_state_buffers().
  ChunkState(const ChunkInput& in, const StepConfig& cfg, int D, int K, bool active_list, const std::string& owner,
             DeviceAllocator& from);
  ~ChunkState();
  ChunkState(const ChunkState&) = delete;
  ChunkState& operator=(const ChunkState&) = delete;

  // Stages the upload of `in` (the same entries the constructor was given) in the background. The host arrays of
  // `in` must stay valid until before_compute() has returned or this object is destroyed (for a chunk: until its
  // finish() has returned). Pinned staging is allocated here, on the calling thread, so running out of it is
  // reported by begin_optimize. Call once.
  void upload(CudaContext& ctx, const ChunkInput& in);
  // Makes `stream` wait for the upload; cheap after the first call.
  void before_compute(cudaStream_t stream);
  // Queues the copies of the results to the host on `stream` and waits for them.
  ChunkResult download(cudaStream_t stream) const;

  // Drops the first `count` active rows whose keep flag is 0 from the active list (stable) on ctx's stream `stream`
  // and returns how many remain; waits for the device, since the count sizes the next launch.
  int compact_active(CudaContext& ctx, int count, cudaStream_t stream);

  // The per-entry arrays as the kernels take them (chunk_params.h).
  ChunkArrays arrays() const;

  // Device bytes per entry of this state (without any network activations).
  static size_t bytes_per_entry(int D, int K, bool adam, bool active_list);

  const int n, D, K;
  // By entry.
  DeviceBuffer<float> x, x0, m, v, target, eps, best_images, best_probs, best_loss;
  DeviceBuffer<int32_t> kind, cls, steps_done, success_step;
  DeviceBuffer<uint8_t> goal_reached;
  // The active list (entry indices) and its double buffer, the new count, per-row keep flags; with active_list only.
  DeviceBuffer<int32_t> active, active_next, count_dev;
  DeviceBuffer<uint8_t> keep;
  // Each entry's class at its first evaluation (-1 until then), when the first iterate is the start image (no
  // init): returned as ChunkResult::start_class, so the engine needs no predict pass of its own. Else empty.
  DeviceBuffer<int32_t> start_class;

 private:
  void queue_upload(CudaContext& ctx, const ChunkInput& in);

  bool adam_, active_list_;
  cudaEvent_t uploaded_ = nullptr;
  std::future<void> staged_;  // the upload thread's task: done once the copies are queued and uploaded_ recorded
  bool uploading_ = false, waited_ = false, failed_ = false;
};

}  // namespace nudge::cuda
