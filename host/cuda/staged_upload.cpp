#include "staged_upload.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "cuda_check.h"
#include "errors.h"

namespace nudge::cuda {

StagedUploader::StagedUploader(cudaStream_t stream, size_t slot_bytes) : stream_(stream), slot_bytes_(slot_bytes) {
  if (slot_bytes_ == 0) throw InternalError("StagedUploader: slots need at least one byte");
  // Blocking sync: a host thread waiting for a slot yields its core instead of spinning.
  constexpr unsigned kFlags = cudaEventDisableTiming | cudaEventBlockingSync;
  CUDA_CHECK(cudaEventCreateWithFlags(&drained_[0], kFlags));
  const cudaError_t e = cudaEventCreateWithFlags(&drained_[1], kFlags);
  if (e != cudaSuccess) {
    cudaEventDestroy(drained_[0]);
    CUDA_CHECK(e);
  }
}

StagedUploader::~StagedUploader() {
  // Copies may still read the slots, which are freed after this body. A destructor must not throw.
  cudaEventSynchronize(drained_[0]);
  cudaEventSynchronize(drained_[1]);
  cudaEventDestroy(drained_[0]);
  cudaEventDestroy(drained_[1]);
}

void StagedUploader::switch_slot() {
  current_ ^= 1;
  // A never-recorded event counts as complete, so the first use of each slot does not wait.
  CUDA_CHECK(cudaEventSynchronize(drained_[current_]));
  used_ = 0;
}

void StagedUploader::reserve() {
  if (slot_[0].get() && slot_[1].get()) return;
  // Both or neither: a failed second allocation must not leave a half-made pair for the next call.
  PinnedBuffer<unsigned char> a(slot_bytes_, "upload staging"), b(slot_bytes_, "upload staging");
  slot_[0] = std::move(a);
  slot_[1] = std::move(b);
  current_ = 0;
  used_ = 0;
}

void StagedUploader::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  reserve();
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  while (bytes > 0) {
    if (used_ == slot_bytes_) switch_slot();
    const size_t piece = std::min(bytes, slot_bytes_ - used_);
    unsigned char* staged = slot_[current_].get() + used_;
    std::memcpy(staged, s, piece);
    CUDA_CHECK(cudaMemcpyAsync(d, staged, piece, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaEventRecord(drained_[current_], stream_));
    used_ += piece;
    d += piece;
    s += piece;
    bytes -= piece;
  }
  sync_if_debug("staged upload", stream_);
}

}  // namespace nudge::cuda
