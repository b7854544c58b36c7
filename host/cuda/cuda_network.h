// The network's forward and backward passes on the GPU for one batch: the twin of CpuNetwork (host/cpu/cpu_network.h),
// layer by layer with the same buffers' meaning. Convolutions through cuDNN (cudnn_conv.h), dense layers through
// cuBLAS (cublas_dense.h), everything else through kernels/. Every architecture the grammar accepts runs here:
// convolutions with any stride and padding, max-pools with overlapping and padded windows, average pools (the fused
// kernel, host/cuda/fused_chunk.h, is the reference architecture's alone).
//
// Differences from the CPU, none visible in results: a ReLU right after a conv or dense layer is fused with that
// layer's bias and computed in place in the layer's output buffer (nothing reads the pre-activation values), and
// Flatten is a view. Parameters are passed in, as device pointers, so one network serves the backend's parameters
// and any other copy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "architecture.h"
#include "device_memory.h"

namespace nudge::cuda {

class CudaContext;
class ConvOp;

class CudaNetwork {
 public:
  // Activations come from `from` when given (an optimize chunk's network: the context's chunk_pool()), else from
  // device_alloc.
  CudaNetwork(CudaContext& ctx, const Architecture& arch, DeviceAllocator* from = nullptr);
  ~CudaNetwork();
  CudaNetwork(const CudaNetwork&) = delete;
  CudaNetwork& operator=(const CudaNetwork&) = delete;

  // Device bytes of activations, argmax indices and backward scratch per image of capacity.
  static size_t bytes_per_image(const Architecture& arch);
  // Makes room for batches of up to n images, activations and the cuDNN workspace (throws DeviceOutOfMemory).
  // forward() reserves on its own; call this first to fail early, before other state is built, and to keep
  // allocation (and the synchronization it implies) out of the steps. weight_gradients: also backward(param_grads).
  void reserve(int n, bool weight_gradients = false);
  int capacity() const { return capacity_; }

  // params: one device pointer per Architecture::params() entry. x [n, D] device memory, read again by backward().
  void forward(const std::vector<const float*>& params, const float* x, int n);
  const float* logits() const;  // [n, K] device memory, valid until the next forward()

  // Backpropagates dlogits [n, K] through the last forward of n images. param_grads (one device pointer per
  // parameter, overwritten) and dx [n, D] are each optional.
  void backward(const std::vector<const float*>& params, const float* dlogits, int n,
                const std::vector<float*>* param_grads, float* dx);

  const Architecture& arch() const { return arch_; }

 private:
  const float* out(int layer) const;
  bool owns_buffer(int layer) const;
  bool relu_fused_into(int layer) const;  // layer is a conv/dense whose following ReLU it computes

  CudaContext& ctx_;
  DeviceAllocator* from_;
  Architecture arch_;
  std::vector<int> param_index_;                  // layer -> index of its weight in params (bias +1), -1 if none
  std::vector<std::unique_ptr<ConvOp>> conv_;     // per layer, conv layers only
  std::vector<DeviceBuffer<float>> act_;          // per layer that owns a buffer
  std::vector<DeviceBuffer<int32_t>> argmax_;     // per max-pool layer
  DeviceBuffer<float> grad_a_, grad_b_;           // backward ping-pong scratch, widest layer
  std::vector<std::string> forward_names_, backward_names_;  // NVTX range names
  int capacity_ = 0;
  bool workspace_for_weights_ = false;  // the reserved workspace covers backward-filter too
  const float* x_ = nullptr;
};

}  // namespace nudge::cuda
