// Host -> device copies from pageable memory that overlap device work: the bytes go through two pinned slots and are
// copied in order on one stream (the context's copy stream). A copy from pageable memory could not run
// asynchronously (the driver stages it itself, synchronously); through pinned slots the DMA of one piece overlaps
// the host's memcpy of the next, and both overlap whatever the compute stream is running.
//
// Cost model: the host memcpy into a slot (~10 GB/s) and the PCIe DMA (~25 GB/s on H100 PCIe Gen5 x16, more on
// SXM) run concurrently, so a chunk's upload takes about bytes / 10 GB/s of host time: ~40 ms for 131,072 MNIST
// images, against hundreds of ms of compute for a 20-step chunk of that size.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "device_memory.h"

namespace nudge::cuda {

class StagedUploader {
 public:
  // slot_bytes: the size of each of the two pinned slots (allocated on first use).
  StagedUploader(cudaStream_t stream, size_t slot_bytes);
  ~StagedUploader();
  StagedUploader(const StagedUploader&) = delete;
  StagedUploader& operator=(const StagedUploader&) = delete;

  // Allocates the pinned slots if that has not happened yet (DeviceOutOfMemory if the host cannot pin them). Call
  // it on the thread that can react to that, before handing copies to another thread; copy() calls it too.
  void reserve();
  // Queues a copy of `bytes` from host `src` (any memory) to device `dst` on the stream. Returns as soon as `src` is
  // no longer needed; the copy completes in stream order. Blocks only while both slots still feed earlier copies.
  void copy(void* dst, const void* src, size_t bytes);
  cudaStream_t stream() const { return stream_; }

 private:
  // Makes the other slot current, after the copies still reading from it have completed.
  void switch_slot();

  cudaStream_t stream_;
  size_t slot_bytes_;
  PinnedBuffer<unsigned char> slot_[2];
  cudaEvent_t drained_[2] = {nullptr, nullptr};  // recorded after the last copy out of each slot
  int current_ = 0;
  size_t used_ = 0;  // bytes of the current slot handed to copies since it became current
};

}  // namespace nudge::cuda
