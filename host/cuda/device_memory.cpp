#include "device_memory.h"

#include <cuda_runtime_api.h>

#include <cstdio>

#include "cuda_check.h"

namespace nudge::cuda {

std::string format_bytes(size_t bytes) {
  char buf[32];
  if (bytes >= (size_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / 1073741824.0);
  else if (bytes >= (size_t{1} << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  else std::snprintf(buf, sizeof buf, "%zu bytes", bytes);
  return buf;
}

void* device_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw DeviceOutOfMemory(std::string("out of device memory allocating ") + format_bytes(bytes) + " for " + what +
                            " (" + format_bytes(free_b) + " free of " + format_bytes(total_b) +
                            "); use a smaller chunk or batch");
  }
  if (e != cudaSuccess) throw_cuda_error(e, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

void device_free(void* p) noexcept {
  // cudaFree fails only on a broken context; a destructor must not throw, and the next checked call reports it.
  if (p) cudaFree(p);
}

void* pinned_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t e = cudaMallocHost(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw DeviceOutOfMemory(std::string("out of page-locked host memory allocating ") + format_bytes(bytes) +
                            " for " + what);
  }
  if (e != cudaSuccess) throw_cuda_error(e, "cudaMallocHost", __FILE__, __LINE__);
  return p;
}

void pinned_free(void* p) noexcept {
  if (p) cudaFreeHost(p);
}

}  // namespace nudge::cuda
