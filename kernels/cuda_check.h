// The CUDA backend's error checks. Every CUDA, cuBLAS and cuDNN call goes through one of the macros below; a failure
// throws nudge::InternalError naming the statement, file:line and the library's own message (out of device memory
// throws DeviceOutOfMemory instead, see device_memory.h, so that a caller can retry with less). Kernel launchers call
// check_launch() right after each launch.
//
// Debugging: NUDGE_CUDA_SYNC=1 makes check_launch() and after_op() synchronize the stream after every op and name
// the op in the error, so an asynchronous fault is reported at the kernel that caused it rather than at some later
// call. It costs a host round trip per op; leave it off for timing.
#pragma once
#include <cuda_runtime_api.h>

#include <string>

namespace nudge::cuda {

// Throws DeviceOutOfMemory for cudaErrorMemoryAllocation, InternalError otherwise. `stmt` is the failing source text.
[[noreturn]] void throw_cuda_error(cudaError_t e, const char* stmt, const char* file, int line);
// cuBLAS and cuDNN failures: `library` "cuBLAS" / "cuDNN", `code` the status name, `message` its description.
[[noreturn]] void throw_library_error(const char* library, const char* code, const std::string& message,
                                      const char* stmt, const char* file, int line);

// NUDGE_CUDA_SYNC=1 (read once per process; it is a debugging switch, not GPU state).
bool debug_sync_requested();

// After a kernel launch: the launch's own error, and with NUDGE_CUDA_SYNC=1 the kernel's outcome; `op` names it.
void check_launch(const char* op, cudaStream_t stream);
// After a library call or copy that has no launch error of its own: with NUDGE_CUDA_SYNC=1, synchronize and name it.
void sync_if_debug(const char* op, cudaStream_t stream);

}  // namespace nudge::cuda

#define CUDA_CHECK(stmt)                                                                   \
  do {                                                                                     \
    const cudaError_t nudge_err_ = (stmt);                                                 \
    if (nudge_err_ != cudaSuccess) ::nudge::cuda::throw_cuda_error(nudge_err_, #stmt, __FILE__, __LINE__); \
  } while (0)

// Used only where cublas_v2.h is included.
#define CUBLAS_CHECK(stmt)                                                                                     \
  do {                                                                                                         \
    const cublasStatus_t nudge_st_ = (stmt);                                                                   \
    if (nudge_st_ != CUBLAS_STATUS_SUCCESS)                                                                    \
      ::nudge::cuda::throw_library_error("cuBLAS", cublasGetStatusName(nudge_st_), cublasGetStatusString(nudge_st_), \
                                         #stmt, __FILE__, __LINE__);                                          \
  } while (0)

// Used only in cudnn_conv.cpp, the one file that calls cuDNN. cudnnGetLastErrorString adds cuDNN's detailed reason.
#define CUDNN_CHECK(stmt)                                                                                     \
  do {                                                                                                        \
    const cudnnStatus_t nudge_st_ = (stmt);                                                                   \
    if (nudge_st_ != CUDNN_STATUS_SUCCESS) {                                                                  \
      char nudge_detail_[512] = {0};                                                                          \
      cudnnGetLastErrorString(nudge_detail_, sizeof nudge_detail_);                                           \
      ::nudge::cuda::throw_library_error("cuDNN", cudnnGetErrorString(nudge_st_), nudge_detail_, #stmt, __FILE__, \
                                         __LINE__);                                                           \
    }                                                                                                         \
  } while (0)

namespace nudge::cuda {
// A launcher's precondition failed (a bug in the caller): InternalError "op: why".
[[noreturn]] void throw_shape_error(const char* op, const std::string& why);
}  // namespace nudge::cuda
