// Device and pinned host buffers (RAII, move-only) and the out-of-memory signal of the CUDA backend.
//
// Out of memory: every device allocation of the backend goes through device_alloc(), which turns
// cudaErrorMemoryAllocation into DeviceOutOfMemory. It derives from std::bad_alloc so that code holding only the
// Backend interface can catch it without CUDA headers. All memory an optimize chunk needs (device memory and the
// pinned upload staging) is allocated in Backend::begin_optimize, on the calling thread, never in step() or
// finish(), so the engine's reaction is simple: catch std::bad_alloc around begin_optimize; with another chunk live,
// begin this one after that one finishes; alone, halve the chunk's entries and try again, and give up (rethrow) once
// a chunk of one row still does not fit. preferred_chunk() already sizes chunks from free memory, so this is a
// fallback for a card shared with other processes.
#pragma once
#include <cstddef>
#include <new>
#include <string>
#include <utility>

#include "chunk_device_plan.h"
#include "device_out_of_memory.h"

namespace nudge::cuda {

// `what` names the buffer in the out-of-memory message ("optimize chunk: iterates").
void* device_alloc(size_t bytes, const char* what);
void device_free(void* p) noexcept;
void* pinned_alloc(size_t bytes, const char* what);
void pinned_free(void* p) noexcept;
// "1.5 GiB"
std::string format_bytes(size_t bytes);

// A typed device allocation; contents uninitialized. From device_alloc, or from an allocator (an optimize chunk's
// buffers come from the context's ReusePool), which it goes back to.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t count, const char* what)
      : ptr_(count ? static_cast<T*>(device_alloc(count * sizeof(T), what)) : nullptr), count_(count) {}
  DeviceBuffer(size_t count, const char* what, DeviceAllocator& from)
      : ptr_(count ? static_cast<T*>(from.allocate(count * sizeof(T), what)) : nullptr), count_(count), from_(&from) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)),
        count_(std::exchange(o.count_, 0)),
        from_(std::exchange(o.from_, nullptr)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      give_back();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
      from_ = std::exchange(o.from_, nullptr);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { give_back(); }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  void give_back() noexcept {
    if (!ptr_) return;
    if (from_) from_->release(ptr_);
    else device_free(ptr_);
  }

  T* ptr_ = nullptr;
  size_t count_ = 0;
  DeviceAllocator* from_ = nullptr;
};

// cudaMalloc / cudaFree as a DeviceAllocator (DeviceOutOfMemory when the card is full).
class CudaMallocAllocator : public DeviceAllocator {
 public:
  void* allocate(size_t bytes, const char* what) override { return device_alloc(bytes, what); }
  void release(void* p) noexcept override { device_free(p); }
};

// Page-locked host memory, for asynchronous copies back from the device.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(size_t count, const char* what)
      : ptr_(count ? static_cast<T*>(pinned_alloc(count * sizeof(T), what)) : nullptr), count_(count) {}
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      pinned_free(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { pinned_free(ptr_); }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace nudge::cuda
