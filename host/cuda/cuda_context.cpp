#include "cuda_context.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda_check.h"
#include "cudnn_conv.h"
#include "staged_upload.h"

namespace nudge::cuda {

namespace {

// Two pinned slots of this size stage every chunk upload: large enough that per-copy costs vanish (a 16 MiB piece
// is ~0.7 ms of PCIe), small enough that pinning them is quick.
constexpr size_t kUploadSlotBytes = size_t{16} << 20;

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

}  // namespace

CudaContext::CudaContext(int device) : device_(device), allow_tf32_(env_flag("NUDGE_ALLOW_TF32")) {
  CUDA_CHECK(cudaSetDevice(device_));
  try {
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    uploader_ = std::make_unique<StagedUploader>(copy_stream_, kUploadSlotBytes);
    upload_worker_ = std::make_unique<SerialWorker>();
    readback_ = PinnedBuffer<int32_t>(1, "read-back slot");
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // CUBLAS_DEFAULT_MATH never uses TF32 for SGEMM; CUBLAS_TF32_TENSOR_OP_MATH allows it.
    CUBLAS_CHECK(cublasSetMathMode(cublas_, allow_tf32_ ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    cudnn_ = std::make_unique<CudnnState>(stream_, allow_tf32_);

    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    workspace_limit_ = std::min<size_t>(size_t{1} << 30, free_b / 16);

    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    int cublas_version = 0;
    CUBLAS_CHECK(cublasGetVersion(cublas_, &cublas_version));
    description_ = std::string(prop.name) + " (cc " + std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                   ", " + format_bytes(total_b) + "), cuDNN " + cudnn_version_string() + ", cuBLAS " +
                   std::to_string(cublas_version) + (allow_tf32_ ? ", TF32 allowed" : ", FP32 (TF32 off)");
  } catch (...) {
    upload_worker_.reset();
    readback_ = PinnedBuffer<int32_t>();
    cudnn_.reset();
    if (cublas_) cublasDestroy(cublas_);
    uploader_.reset();
    if (copy_stream_) cudaStreamDestroy(copy_stream_);
    if (stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

CudaContext::~CudaContext() {
  // Queued work may still read buffers owned by members; finish it before anything is freed. Errors here were
  // already reported (or will be by the next checked call): a destructor must not throw.
  upload_worker_.reset();  // runs what was queued, then joins
  if (stream_) cudaStreamSynchronize(stream_);
  if (copy_stream_) cudaStreamSynchronize(copy_stream_);
  workspace_ = DeviceBuffer<unsigned char>();
  readback_ = PinnedBuffer<int32_t>();
  cudnn_.reset();
  if (cublas_) cublasDestroy(cublas_);
  uploader_.reset();
  if (copy_stream_) cudaStreamDestroy(copy_stream_);
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaContext::workspace(size_t bytes) {
  if (bytes == 0) return workspace_.get();
  if (workspace_.size() < bytes) {
    synchronize();
    workspace_ = DeviceBuffer<unsigned char>();
    workspace_ = DeviceBuffer<unsigned char>(bytes, "cuDNN workspace");
  }
  return workspace_.get();
}

void CudaContext::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaContext::sync_if_debug_(const char* op) const { sync_if_debug(op, stream_); }

}  // namespace nudge::cuda
