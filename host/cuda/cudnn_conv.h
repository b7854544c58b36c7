// The backend's convolutions through cuDNN's legacy (v7-style) convolution API. cudnn_conv.cpp is the only file
// that calls cuDNN, so that a move to the cuDNN graph API stays inside it; this header includes no cuDNN.
//
// Algorithms: chosen once per shape with cudnnGetConvolution*Algorithm_v7 (heuristics, no trial runs, so choosing
// allocates nothing and costs microseconds) and cached in the context. The batch size enters the key rounded up to
// a power of two: an optimize chunk's batch shrinks a little at most steps as entries stop, and the algorithm chosen
// for the bucket runs any batch in it (the workspace is queried for the actual batch on every call; should an
// algorithm refuse the actual shape, the exact shape gets its own choice). Preference: no TF32 unless
// NUDGE_ALLOW_TF32=1 (FMA math), deterministic algorithms first, workspace within the context's limit.
// Batches whose tensors would pass 2^31 elements are run in slices (cuDNN's legacy API indexes with int).
#pragma once
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "architecture.h"

namespace nudge::cuda {

class CudaContext;

// The cuDNN handle and the cache of algorithm choices; owned by CudaContext.
class CudnnState {
 public:
  CudnnState(cudaStream_t stream, bool allow_tf32);
  ~CudnnState();
  CudnnState(const CudnnState&) = delete;
  CudnnState& operator=(const CudnnState&) = delete;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// "9.19.0" for the loaded cuDNN library.
std::string cudnn_version_string();

// One cross-correlation x [n, in.c, in.h, in.w] * w [K, in.c, k, k] -> y [n, K, win.out(in.h), win.out(in.w)] with
// the window `win` = (k, stride, pad): zero padding of `pad` on every side, the filter moved by `stride` in both
// directions, without bias (the CPU twin: cpu::conv2d_* with the same Window). Outputs are overwritten. All pointers
// are device memory on the context's stream. The constructor throws InternalError if cuDNN's output size for the
// descriptor disagrees with Window::out (the size every other layer and the CPU assume).
class ConvOp {
 public:
  ConvOp(CudaContext& ctx, Shape3 in, int K, Window win);
  ~ConvOp();
  ConvOp(const ConvOp&) = delete;
  ConvOp& operator=(const ConvOp&) = delete;

  // The most cuDNN workspace the passes would ask for at any batch up to max_n (each power-of-two bucket's plan at
  // the bucket's largest batch, assuming workspace grows with the batch). Choosing plans is heuristic-only and
  // allocates nothing; reserving the result up front keeps allocation out of the steps. Not covered: a batch whose
  // bucket plan refuses it exactly gets its own plan at run time, and the context's workspace grows then (after
  // synchronizing). That needs an algorithm that takes the bucket's batch but not a smaller one: rare.
  size_t workspace_bound(int max_n, bool weight_gradients);

  void forward(const float* x, const float* w, float* y, int n);
  void backward_data(const float* dy, const float* w, float* dx, int n);
  // dw [K, in.c, k, k] = sum over the batch.
  void backward_filter(const float* x, const float* dy, float* dw, int n);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nudge::cuda
