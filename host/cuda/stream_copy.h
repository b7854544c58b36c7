// Checked asynchronous copies between host and device memory on a stream, for the backend's host code. From or into
// pageable memory they are staged by the driver: an upload has left the host array when it returns, a download is
// complete only once the stream has been synchronized.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

#include "cuda_check.h"
#include "device_memory.h"

namespace nudge::cuda {

template <class T>
void upload(T* dst, const T* src, size_t count, cudaStream_t s) {
  if (count) CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyHostToDevice, s));
}

template <class T>
void download(T* dst, const T* src, size_t count, cudaStream_t s) {
  if (count) CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyDeviceToHost, s));
}

// The first `count` elements of src into a vector of that size (valid after the stream's synchronization).
template <class T>
std::vector<T> download_vector(const DeviceBuffer<T>& src, size_t count, cudaStream_t s) {
  std::vector<T> out(count);
  download(out.data(), src.get(), count, s);
  return out;
}

}  // namespace nudge::cuda
