// An owned CUDA event without timing (the cheap kind, for ordering and host waits), created on construction and
// destroyed with its owner, so that an owner whose constructor throws later on leaks nothing.
#pragma once
#include <cuda_runtime_api.h>

#include "cuda_check.h"

namespace nudge::cuda {

class CudaEvent {
 public:
  CudaEvent() { CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~CudaEvent() {
    if (event_) cudaEventDestroy(event_);  // a destructor must not throw
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace nudge::cuda
