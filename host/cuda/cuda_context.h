// Everything the CUDA backend holds per device: the stream all compute goes to, a second stream for uploads that
// overlap it (an optimize chunk's inputs, staged through pinned memory), the cuBLAS and cuDNN handles, the cuDNN
// workspace, the pool optimize chunks take their memory from, and the switches read from the environment. One per
// card, shared by every backend of the process (cuda_backend.cpp, shared_context), and only through them.
//   NUDGE_CUDA_SYNC=1   synchronize after every op and name it in errors (cuda_check.h)
//   NUDGE_ALLOW_TF32=1  let cuBLAS and cuDNN use TF32 tensor cores (default: full FP32, to match the CPU)
//   NUDGE_CUDA_LOG=f    append each cuDNN algorithm choice (once per pass, shape and batch bucket) to file f
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "device_memory.h"
#include "serial_worker.h"

namespace nudge::cuda {

class CudnnState;
class StagedUploader;

class CudaContext {
 public:
  explicit CudaContext(int device = 0);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  // Uploads on the copy stream (staged_upload.h). Work on stream() that reads what they wrote must wait for them:
  // record an event on copy_stream() after them and make stream() wait on it. The uploader is not thread-safe: use
  // it from one thread at a time (optimize chunks use it only from upload_worker()).
  StagedUploader& uploader() { return *uploader_; }
  cudaStream_t copy_stream() const { return copy_stream_; }
  // The host thread that stages optimize chunks' inputs (ChunkState::upload), so that staging overlaps the compute
  // that the calling thread drives.
  SerialWorker& upload_worker() { return *upload_worker_; }
  cublasHandle_t cublas() const { return cublas_; }
  CudnnState& cudnn() { return *cudnn_; }
  bool allow_tf32() const { return allow_tf32_; }
  // A page-locked int for 4-byte read-backs on stream() (an optimize chunk's active count): copy into it, synchronize
  // stream(), read it at once. One per context rather than per chunk: pinning and unpinning cost more than the step
  // they would serve (cudaFreeHost synchronizes the device), and one host thread drives a context's compute.
  int32_t* readback_slot() const { return readback_.get(); }
  int device() const { return device_; }
  // Where optimize chunks' device memory comes from: released chunks' blocks are kept and reused by the next
  // chunks of the job, so after the first two (the engine keeps two alive at once) a chunk allocates and frees
  // nothing on the device (cudaFree would synchronize it). A chunk returns its blocks only after synchronizing its
  // streams, so a reused block is never still in use.
  ReusePool& chunk_pool() { return chunk_pool_; }

  // Scratch memory for cuDNN, at least `bytes`; grows (after synchronizing, since queued work may still use the old
  // buffer) and never shrinks. Valid until the next call.
  void* workspace(size_t bytes);
  // The most workspace a convolution algorithm may ask for: 1/16 of the device memory that was free at start-up,
  // capped at 1 GiB. Algorithms needing more (im2col of a huge batch) are passed over.
  size_t workspace_limit() const { return workspace_limit_; }

  // With NUDGE_CUDA_SYNC=1: synchronize and report a failure as belonging to `op`.
  void after_op(const char* op) const { sync_if_debug_(op); }
  void synchronize() const;

  // "NVIDIA H100 80GB HBM3 (cc 9.0, 79.1 GiB), cuDNN 9.19.0, cuBLAS 130000, FP32 (TF32 off)"
  const std::string& description() const { return description_; }

 private:
  void sync_if_debug_(const char* op) const;

  int device_;
  bool allow_tf32_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;
  std::unique_ptr<StagedUploader> uploader_;
  std::unique_ptr<SerialWorker> upload_worker_;
  PinnedBuffer<int32_t> readback_;
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<CudnnState> cudnn_;
  DeviceBuffer<unsigned char> workspace_;
  size_t workspace_limit_ = 0;
  std::string description_;
  CudaMallocAllocator device_allocator_;
  ReusePool chunk_pool_{device_allocator_};  // after device_allocator_: destroyed (trimmed) before it
};

}  // namespace nudge::cuda
