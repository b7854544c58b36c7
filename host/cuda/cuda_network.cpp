#include "cuda_network.h"

#include <algorithm>
#include <type_traits>

#include "avgpool.cuh"
#include "bias_grad.cuh"
#include "bias_relu.cuh"
#include "cublas_dense.h"
#include "cuda_check.h"
#include "cuda_context.h"
#include "cudnn_conv.h"
#include "maxpool.cuh"
#include "nvtx.h"

namespace nudge::cuda {

namespace {

bool fusable(LayerKind k) { return k == LayerKind::Conv || k == LayerKind::Dense; }

const char* kind_name(LayerKind k) {
  switch (k) {
    case LayerKind::Conv: return "conv";
    case LayerKind::Relu: return "relu";
    case LayerKind::MaxPool: return "pool";
    case LayerKind::AvgPool: return "avgpool";
    case LayerKind::Flatten: return "flatten";
    case LayerKind::Dense: return "dense";
    case LayerKind::BatchNorm: return "bn";
    case LayerKind::Dropout: return "dropout";
  }
  return "layer";
}

bool is_fused_relu(const Architecture& a, size_t i) {
  return a.layers[i].kind == LayerKind::Relu && i > 0 && fusable(a.layers[i - 1].kind);
}

bool layer_owns_buffer(const Architecture& a, size_t i) {
  const LayerKind k = a.layers[i].kind;
  return k != LayerKind::Flatten && !is_fused_relu(a, i);
}

size_t widest_layer(const Architecture& a) {
  size_t widest = a.input.size();
  for (const LayerSpec& l : a.layers) widest = std::max<size_t>(widest, l.out.size());
  return widest;
}

}  // namespace

size_t CudaNetwork::bytes_per_image(const Architecture& a) {
  size_t bytes = 2 * widest_layer(a) * sizeof(float);
  for (size_t i = 0; i < a.layers.size(); ++i) {
    if (layer_owns_buffer(a, i)) bytes += a.layers[i].out.size() * sizeof(float);
    if (a.layers[i].kind == LayerKind::MaxPool) bytes += a.layers[i].out.size() * sizeof(int32_t);
  }
  return bytes;
}

CudaNetwork::CudaNetwork(CudaContext& ctx, const Architecture& arch, DeviceAllocator* from)
    : ctx_(ctx), from_(from), arch_(arch) {
  int p = 0;
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerSpec& l = arch_.layers[i];
    // The backend folds such a model before it builds a network (model_fold.h).
    if (l.kind == LayerKind::BatchNorm || l.kind == LayerKind::Dropout)
      throw InternalError("CudaNetwork: layer '" + std::string(kind_name(l.kind)) + "' reached the GPU unfolded");
    const bool has_params = fusable(l.kind);
    param_index_.push_back(has_params ? p : -1);
    if (has_params) p += 2;
    conv_.push_back(l.kind == LayerKind::Conv ? std::make_unique<ConvOp>(ctx_, l.in, l.out_channels, l.window()) : nullptr);
    const std::string name = l.name.empty() ? std::string(kind_name(l.kind)) + std::to_string(i) : l.name;
    forward_names_.push_back(name + " forward");
    backward_names_.push_back(name + " backward");
  }
  act_.resize(arch_.layers.size());
  argmax_.resize(arch_.layers.size());
}

CudaNetwork::~CudaNetwork() = default;

bool CudaNetwork::owns_buffer(int layer) const { return layer_owns_buffer(arch_, layer); }

bool CudaNetwork::relu_fused_into(int layer) const {
  return layer + 1 < static_cast<int>(arch_.layers.size()) && is_fused_relu(arch_, layer + 1);
}

void CudaNetwork::reserve(int n, bool weight_gradients) {
  if (n <= capacity_ && (!weight_gradients || workspace_for_weights_)) return;
  // A bound once made for the weight gradients keeps covering them as the batch grows.
  const bool weights = weight_gradients || workspace_for_weights_;
  size_t workspace = 0;
  for (const auto& conv : conv_)
    if (conv) workspace = std::max(workspace, conv->workspace_bound(std::max(n, capacity_), weights));
  ctx_.workspace(workspace);
  workspace_for_weights_ = weights;
  if (n <= capacity_) return;
  // Free the old buffers first (after queued work that may use them), so growing never needs both at once. A network
  // that holds nothing yet skips the wait: a chunk begun while another computes must not wait for it.
  if (capacity_ > 0) ctx_.synchronize();
  for (auto& b : act_) b = DeviceBuffer<float>();
  for (auto& b : argmax_) b = DeviceBuffer<int32_t>();
  grad_a_ = DeviceBuffer<float>();
  grad_b_ = DeviceBuffer<float>();
  capacity_ = 0;
  const size_t N = static_cast<size_t>(n);
  auto make = [this](auto* tag, size_t count, const char* what) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return from_ ? DeviceBuffer<T>(count, what, *from_) : DeviceBuffer<T>(count, what);
  };
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerSpec& l = arch_.layers[i];
    if (owns_buffer(static_cast<int>(i)))
      act_[i] = make(static_cast<float*>(nullptr), N * l.out.size(), "network activations");
    if (l.kind == LayerKind::MaxPool)
      argmax_[i] = make(static_cast<int32_t*>(nullptr), N * l.out.size(), "max-pool indices");
  }
  grad_a_ = make(static_cast<float*>(nullptr), N * widest_layer(arch_), "backward scratch");
  grad_b_ = make(static_cast<float*>(nullptr), N * widest_layer(arch_), "backward scratch");
  capacity_ = n;
}

const float* CudaNetwork::out(int layer) const {
  // Flatten is a view of its input; a fused ReLU lives in its conv/dense layer's buffer.
  while (layer >= 0 && !owns_buffer(layer)) --layer;
  return layer < 0 ? x_ : act_[layer].get();
}

const float* CudaNetwork::logits() const { return out(static_cast<int>(arch_.layers.size()) - 1); }

void CudaNetwork::forward(const std::vector<const float*>& params, const float* x, int n) {
  reserve(n);
  x_ = x;
  const cudaStream_t s = ctx_.stream();
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerSpec& l = arch_.layers[i];
    if (!owns_buffer(static_cast<int>(i))) continue;  // Flatten, or a ReLU done by the layer before
    NvtxRange range(forward_names_[i].c_str());
    const float* in = out(static_cast<int>(i) - 1);
    float* y = act_[i].get();
    switch (l.kind) {
      case LayerKind::Conv:
      case LayerKind::Dense: {
        const float* w = params[param_index_[i]];
        const float* b = params[param_index_[i] + 1];
        if (l.kind == LayerKind::Conv) conv_[i]->forward(in, w, y, n);
        else dense_forward_gemm(ctx_, in, n, l.in.size(), w, l.out_channels, y);
        const int P = l.out.h * l.out.w;
        if (relu_fused_into(static_cast<int>(i))) bias_relu_cuda(y, b, y, n, l.out_channels, P, s);
        else bias_add_cuda(y, b, n, l.out_channels, P, s);
        break;
      }
      case LayerKind::Relu: bias_relu_cuda(in, nullptr, y, n, 1, l.out.size(), s); break;
      case LayerKind::MaxPool:
        maxpool_forward_cuda(in, n, l.in.c, l.in.h, l.in.w, l.window(), y, argmax_[i].get(), s);
        break;
      case LayerKind::AvgPool: avgpool_forward_cuda(in, n, l.in.c, l.in.h, l.in.w, l.window(), y, s); break;
      case LayerKind::Flatten: break;
      case LayerKind::BatchNorm:
      case LayerKind::Dropout: break;  // refused by the constructor
    }
  }
}

void CudaNetwork::backward(const std::vector<const float*>& params, const float* dlogits, int n,
                           const std::vector<float*>* param_grads, float* dx) {
  if (n > capacity_) throw_shape_error("CudaNetwork::backward", "batch larger than the last forward's capacity");
  const cudaStream_t s = ctx_.stream();
  const float* dy = dlogits;
  float* bufs[2] = {grad_a_.get(), grad_b_.get()};
  int which = 0;
  for (int i = static_cast<int>(arch_.layers.size()) - 1; i >= 0; --i) {
    const LayerSpec& l = arch_.layers[i];
    const bool need_dx = i > 0 || dx;
    if (l.kind == LayerKind::Flatten && i > 0) continue;  // a view: the gradient passes through unchanged
    NvtxRange range(backward_names_[i].c_str());
    const float* in = out(i - 1);
    float* d = i == 0 ? dx : bufs[which];
    switch (l.kind) {
      case LayerKind::Conv:
      case LayerKind::Dense: {
        const int P = l.out.h * l.out.w;
        if (param_grads) {
          float* dw = (*param_grads)[param_index_[i]];
          float* db = (*param_grads)[param_index_[i] + 1];
          if (l.kind == LayerKind::Conv) conv_[i]->backward_filter(in, dy, dw, n);
          else dense_backward_weight_gemm(ctx_, in, dy, n, l.in.size(), l.out_channels, dw);
          bias_grad_cuda(dy, n, l.out_channels, P, db, s);
        }
        if (need_dx) {
          const float* w = params[param_index_[i]];
          if (l.kind == LayerKind::Conv) conv_[i]->backward_data(dy, w, d, n);
          else dense_backward_data_gemm(ctx_, dy, n, l.in.size(), w, l.out_channels, d);
        }
        break;
      }
      case LayerKind::Relu:
        if (need_dx) relu_backward_cuda(out(i), dy, d, static_cast<size_t>(n) * l.out.size(), s);
        break;
      case LayerKind::MaxPool:
        if (need_dx) maxpool_backward_cuda(dy, argmax_[i].get(), n, l.in.c, l.in.h, l.in.w, l.window(), d, s);
        break;
      case LayerKind::AvgPool:
        if (need_dx) avgpool_backward_cuda(dy, n, l.in.c, l.in.h, l.in.w, l.window(), d, s);
        break;
      case LayerKind::Flatten:  // only as the first layer, with dx requested
        if (need_dx)
          CUDA_CHECK(cudaMemcpyAsync(d, dy, sizeof(float) * n * l.in.size(), cudaMemcpyDeviceToDevice, s));
        break;
      case LayerKind::BatchNorm:
      case LayerKind::Dropout: break;  // refused by the constructor
    }
    if (!need_dx) break;
    dy = d;
    which ^= 1;
  }
}

}  // namespace nudge::cuda
