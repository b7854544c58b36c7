// An optimize chunk whose state lives on the GPU: the twin of CpuOptimizeChunk (host/cpu/cpu_backend.cpp).
//
// Per step(), on the context's stream:
//   1. the active entries' iterates -> the network (directly while every entry is active, else gathered into a
//      dense batch of the active rows: stopped entries cost nothing further)
//   2. softmax + loss + dlogits per row (kernels/softmax_loss)
//   3. goal test and best-iterate bookkeeping, keep flags (kernels/optimize_track)
//   4. backward to the input, then the fused optimizer step + projection for the rows still kept (kernels/input_step)
//   5. with early stopping: stable compaction of the active list on the device (kernels/compact_active) and one
//      4-byte read-back of the new count, the only host synchronization of a step. Without early stopping steps are
//      queued without any synchronization.
// finish() evaluates the final iterates (1-3 only) and copies the results back.
//
// All device memory is allocated by the constructor (see device_memory.h for the out-of-memory contract), which
// queues the inputs' upload on the copy stream and returns without waiting (chunk_state.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend.h"
#include "chunk_state.h"
#include "cuda_network.h"
#include "device_memory.h"

namespace nudge::cuda {

class CudaContext;

class CudaOptimizeChunk : public OptimizeChunk {
 public:
  // params: the backend's device parameter pointers; they must stay valid and unchanged while the chunk lives.
  CudaOptimizeChunk(CudaContext& ctx, const Architecture& arch, std::vector<const float*> params,
                    const ChunkInput& in, const StepConfig& cfg);
  ~CudaOptimizeChunk() override;

  void step() override;
  int active_count() const override { return active_count_; }
  ChunkResult finish() override;

  // Device bytes one entry costs (state + network activations), for sizing chunks.
  static size_t bytes_per_entry(const Architecture& arch, bool adam);

 private:
  void evaluate_and_update(bool update);

  CudaContext& ctx_;
  StepConfig cfg_;
  std::vector<const float*> params_;
  int D_, K_;
  int active_count_;
  bool active_is_identity_ = true;  // active list == 0..n-1 (nothing stopped yet): no gather needed
  bool finished_ = false;
  bool first_evaluated_ = false;  // the start classes are taken at the first evaluation
  CudaNetwork net_;
  ChunkState st_;
  // By row of the current batch.
  DeviceBuffer<float> batch_x_, grad_, probs_, loss_, dlogits_;
};

}  // namespace nudge::cuda
