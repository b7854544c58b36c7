#include "cuda_check.h"

#include <cstdlib>
#include <cstring>

#include "device_out_of_memory.h"
#include "errors.h"

namespace nudge::cuda {

namespace {

std::string where(const char* stmt, const char* file, int line) {
  const char* slash = std::strrchr(file, '/');
  return std::string(" in `") + stmt + "` at " + (slash ? slash + 1 : file) + ":" + std::to_string(line);
}

}  // namespace

void throw_cuda_error(cudaError_t e, const char* stmt, const char* file, int line) {
  // Reading the error clears it unless it is sticky (a kernel fault), in which case the context is lost anyway.
  cudaGetLastError();
  const std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")" +
                          where(stmt, file, line);
  if (e == cudaErrorMemoryAllocation) throw DeviceOutOfMemory(msg + ": out of device memory; use a smaller chunk");
  if (e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure)
    throw InternalError(msg + " (an earlier kernel may be at fault: rerun with NUDGE_CUDA_SYNC=1 to find it)");
  throw InternalError(msg);
}

void throw_library_error(const char* library, const char* code, const std::string& message, const char* stmt,
                         const char* file, int line) {
  std::string msg = std::string(library) + " error " + code;
  if (!message.empty() && message != code) msg += " (" + message + ")";
  throw InternalError(msg + where(stmt, file, line));
}

void throw_shape_error(const char* op, const std::string& why) {
  throw InternalError(std::string(op) + ": " + why);
}

bool debug_sync_requested() {
  static const bool on = [] {
    const char* v = std::getenv("NUDGE_CUDA_SYNC");
    return v && std::strcmp(v, "0") != 0 && *v != '\0';
  }();
  return on;
}

void check_launch(const char* op, cudaStream_t stream) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw InternalError(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                        ") launching " + op +
                        (e == cudaErrorNoKernelImageForDevice ? ": this build has no code for the device's architecture"
                                                              : ""));
  sync_if_debug(op, stream);
}

void sync_if_debug(const char* op, cudaStream_t stream) {
  if (!debug_sync_requested()) return;
  const cudaError_t e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess)
    throw InternalError(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                        ") in op '" + op + "' (NUDGE_CUDA_SYNC=1)");
}

}  // namespace nudge::cuda
