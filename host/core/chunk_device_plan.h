// What an optimize chunk costs a GPU backend in device allocations and host -> device bytes, in code without CUDA, so
// that tests on machines without a GPU can count it (tests/test_chunk_device_plan.cpp), and the CUDA backend, which
// allocates and uploads through these very functions and classes (host/cuda/chunk_state.cpp), cannot drift from
// what they count.
//
//   - DeviceAllocator: where a chunk's device memory comes from. The CUDA backend's is cudaMalloc/cudaFree behind a
//     ReusePool (one per context), so the chunks of a job reuse the first chunks' memory: cudaFree synchronizes the
//     whole device, and 15-34 cudaMalloc/cudaFree pairs per chunk would stall every chunk boundary.
//   - chunk_state_buffers(): every buffer of a chunk's state, in allocation order.
//   - chunk_upload_bytes(): the host -> device bytes of a chunk's inputs; start images the device makes itself
//     (ChunkInput::generated) cost none.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "backend.h"

namespace nudge {

class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // Throws std::bad_alloc (the CUDA backend: DeviceOutOfMemory, naming `what`) when the memory is not there.
  virtual void* allocate(size_t bytes, const char* what) = 0;
  virtual void release(void* p) noexcept = 0;
};

// Keeps released blocks and hands them out again: a request takes the smallest kept block at least as large, and
// goes upstream only when there is none. Blocks go back upstream when the pool is destroyed, or all of them at once
// when upstream runs out of memory (then the request is retried). Released memory must no longer be in use by the
// device: the CUDA chunks synchronize their streams before their buffers die, which is what orders a reused block's
// new writes after its old reads. Thread-safe.
class ReusePool : public DeviceAllocator {
 public:
  explicit ReusePool(DeviceAllocator& upstream) : upstream_(upstream) {}
  ~ReusePool() override;
  ReusePool(const ReusePool&) = delete;
  ReusePool& operator=(const ReusePool&) = delete;

  void* allocate(size_t bytes, const char* what) override;
  void release(void* p) noexcept override;
  // Gives every kept block back upstream.
  void trim() noexcept;

  size_t kept_blocks() const;

 private:
  DeviceAllocator& upstream_;
  mutable std::mutex mutex_;
  std::multimap<size_t, void*> kept_;           // size -> block
  std::unordered_map<void*, size_t> size_of_;  // every block this pool got from upstream and still holds or lent
};

struct ChunkBuffer {
  const char* what;
  size_t bytes;
};

// The buffers of one chunk's state (host/cuda/chunk_state.h) for n entries of D pixels and K classes, with Adam's
// moments or not, with the early-stopping active list or not, with the start classes (ChunkResult::start_class;
// chunks without random starts) or not.
std::vector<ChunkBuffer> chunk_state_buffers(int n, int D, int K, bool adam, bool active_list, bool start_class);

struct ChunkUploadBytes {
  size_t start_images = 0;  // x0
  size_t total = 0;         // everything copied from host memory, start images included
};

// What beginning a chunk copies from the host to the device (host/cuda/chunk_state.cpp, queue_upload), with the
// early-stopping active list or not.
ChunkUploadBytes chunk_upload_bytes(const ChunkInput& in, int D, int K, bool active_list);

}  // namespace nudge
