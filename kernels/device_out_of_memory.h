// The CUDA layer's out-of-device-memory signal, in a header without CUDA so that host code holding only the Backend
// interface (or only std::bad_alloc) can name and catch it. Thrown by throw_cuda_error (cuda_check.h) for
// cudaErrorMemoryAllocation and by the device allocators (host/cuda/device_memory.h).
#pragma once
#include <new>
#include <string>
#include <utility>

namespace nudge::cuda {

class DeviceOutOfMemory : public std::bad_alloc {
 public:
  explicit DeviceOutOfMemory(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

}  // namespace nudge::cuda
