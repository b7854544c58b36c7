#include "cpu_network.h"

#include <algorithm>

#include "cpu_layers.h"
#include "cpu_train_layers.h"
#include "dropout_mask.h"
#include "errors.h"

namespace nudge {

CpuNetwork::CpuNetwork(const Architecture& arch) : arch_(arch) {
  int p = 0, dropouts = 0;
  for (const LayerSpec& l : arch_.layers) {
    const int tensors = l.kind == LayerKind::Conv || l.kind == LayerKind::Dense ? 2 : l.kind == LayerKind::BatchNorm ? 4 : 0;
    param_index_.push_back(tensors ? p : -1);
    p += tensors;
    dropout_ordinal_.push_back(l.kind == LayerKind::Dropout ? dropouts++ : -1);
  }
  // A ReLU after a convolution or dense layer is applied in that layer's pass, straight into the ReLU's buffer; the
  // pre-activation buffer is then neither kept nor written (nothing reads it: ReLU's backward uses its output).
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerKind k = arch_.layers[i].kind;
    relu_fused_.push_back((k == LayerKind::Conv || k == LayerKind::Dense) && i + 1 < arch_.layers.size() &&
                          arch_.layers[i + 1].kind == LayerKind::Relu);
  }
  const size_t L = arch_.layers.size();
  act_.resize(L);
  argmax_.resize(L);
  bn_mean_.resize(L);
  bn_var_.resize(L);
  keep_.resize(L);
}

void CpuNetwork::reserve(int n) {
  if (n <= capacity_) return;
  size_t floats = 0;
  for (const LayerSpec& l : arch_.layers) floats += static_cast<size_t>(l.out.size()) * 3;
  with_memory_named("activations of " + std::to_string(n) + " images", static_cast<size_t>(n) * floats * sizeof(float),
                    [&] { reserve_buffers(n); });
}

void CpuNetwork::reserve_buffers(int n) {
  size_t widest = arch_.input.size();
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerSpec& l = arch_.layers[i];
    widest = std::max<size_t>(widest, l.out.size());
    if (l.kind != LayerKind::Flatten && !relu_fused_[i]) act_[i].resize(static_cast<size_t>(n) * l.out.size());
    if (l.kind == LayerKind::MaxPool) argmax_[i].resize(static_cast<size_t>(n) * l.out.size());
    if (l.kind == LayerKind::Dropout) keep_[i].resize(static_cast<size_t>(n) * l.out.size());
    if (l.kind == LayerKind::BatchNorm) {
      bn_mean_[i].resize(l.out.c);
      bn_var_[i].resize(l.out.c);
    }
  }
  grad_a_.resize(static_cast<size_t>(n) * widest);
  grad_b_.resize(static_cast<size_t>(n) * widest);
  capacity_ = n;
}

const float* CpuNetwork::out(int layer) const {
  // Flatten changes no bytes in NCHW: its output is its input.
  while (layer >= 0 && arch_.layers[layer].kind == LayerKind::Flatten) --layer;
  return layer < 0 ? x_ : act_[layer].data();
}

void CpuNetwork::forward(const std::vector<const float*>& params, const float* x, int n, const TrainingPass* training) {
  reserve(n);
  x_ = x;
  training_ = training != nullptr;
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerSpec& l = arch_.layers[i];
    const float* in = out(static_cast<int>(i) - 1);
    float* y = act_[i].data();
    const bool relu_next = relu_fused_[i];
    switch (l.kind) {
      case LayerKind::Conv:
        cpu::conv2d_forward(in, n, l.in, params[param_index_[i]], params[param_index_[i] + 1], l.out_channels,
                            l.window(), relu_next ? act_[i + 1].data() : y, relu_next);
        break;
      case LayerKind::Relu: cpu::relu_forward(in, static_cast<size_t>(n) * l.out.size(), y); break;
      case LayerKind::MaxPool: cpu::maxpool_forward(in, n, l.in, l.window(), y, argmax_[i].data()); break;
      case LayerKind::AvgPool: cpu::avgpool_forward(in, n, l.in, l.window(), y); break;
      case LayerKind::Flatten: break;
      case LayerKind::Dense:
        cpu::dense_forward(in, n, l.in.size(), params[param_index_[i]], params[param_index_[i] + 1], l.out_channels,
                           relu_next ? act_[i + 1].data() : y, relu_next);
        break;
      case LayerKind::BatchNorm: {
        const int q = param_index_[i], C = l.out.c, P = l.out.h * l.out.w;
        if (training_) {
          cpu::batch_norm_forward_train(in, n, C, P, params[q], params[q + 1], y, bn_mean_[i].data(), bn_var_[i].data());
        } else {
          for (int c = 0; c < C; ++c) {
            bn_mean_[i][c] = params[q + 2][c];
            bn_var_[i][c] = params[q + 3][c];
          }
          cpu::batch_norm_forward_eval(in, n, C, P, params[q], params[q + 1], params[q + 2], params[q + 3], y);
        }
        break;
      }
      case LayerKind::Dropout: {
        const size_t count = static_cast<size_t>(n) * l.out.size();
        if (!training_) {
          std::copy(in, in + count, y);
          break;
        }
        const float p = l.drop_probability();
        cpu::dropout_mask(training->seed, training->step, training->row_keys, n, static_cast<uint32_t>(dropout_ordinal_[i]),
                          static_cast<int>(l.out.size()), p, keep_[i].data());
        cpu::dropout_forward(in, keep_[i].data(), count, dropout_scale(p), y);
        break;
      }
    }
    if (relu_next) ++i;
  }
}

void CpuNetwork::backward(const std::vector<const float*>& params, const float* dlogits, int n,
                          const std::vector<float*>* param_grads, float* dx) {
  const float* dy = dlogits;
  float* bufs[2] = {grad_a_.data(), grad_b_.data()};
  int which = 0;
  for (int i = static_cast<int>(arch_.layers.size()) - 1; i >= 0; --i) {
    const LayerSpec& l = arch_.layers[i];
    const float* in = out(i - 1);
    const bool need_dx = i > 0 || dx;
    float* d = i == 0 ? dx : bufs[which];
    const bool relu_before = l.kind == LayerKind::MaxPool && i > 0 && arch_.layers[i - 1].kind == LayerKind::Relu &&
                             l.window().stride >= l.window().k;
    switch (l.kind) {
      case LayerKind::Conv:
        if (param_grads)
          cpu::conv2d_backward_filter(in, dy, n, l.in, l.out_channels, l.window(), (*param_grads)[param_index_[i]],
                                      (*param_grads)[param_index_[i] + 1]);
        if (need_dx) cpu::conv2d_backward_data(dy, n, l.in, params[param_index_[i]], l.out_channels, l.window(), d);
        break;
      case LayerKind::Relu:
        if (need_dx) cpu::relu_backward(act_[i].data(), dy, static_cast<size_t>(n) * l.out.size(), d);
        break;
      case LayerKind::MaxPool:
        if (relu_before) {
          // The ReLU's backward in the pool's pass, into the buffer the ReLU would have written.
          d = i - 1 == 0 ? dx : d;
          if (i - 1 > 0 || dx) cpu::maxpool_relu_backward(dy, argmax_[i].data(), act_[i - 1].data(), n, l.in, l.window(), d);
        } else if (need_dx) {
          cpu::maxpool_backward(dy, argmax_[i].data(), n, l.in, l.window(), d);
        }
        break;
      case LayerKind::AvgPool:
        if (need_dx) cpu::avgpool_backward(dy, n, l.in, l.window(), d);
        break;
      case LayerKind::Flatten:
        if (need_dx) std::copy(dy, dy + static_cast<size_t>(n) * l.in.size(), d);
        break;
      case LayerKind::Dense:
        if (param_grads)
          cpu::dense_backward_params(in, dy, n, l.in.size(), l.out_channels, (*param_grads)[param_index_[i]],
                                     (*param_grads)[param_index_[i] + 1]);
        if (need_dx) cpu::dense_backward_data(dy, n, l.in.size(), params[param_index_[i]], l.out_channels, d);
        break;
      case LayerKind::BatchNorm: {
        const int q = param_index_[i], C = l.out.c, P = l.out.h * l.out.w;
        std::vector<float> dgamma(C), dbeta(C);
        float* dg = param_grads ? (*param_grads)[q] : dgamma.data();
        float* db = param_grads ? (*param_grads)[q + 1] : dbeta.data();
        cpu::batch_norm_backward(in, dy, n, C, P, params[q], bn_mean_[i].data(), bn_var_[i].data(), training_,
                                 need_dx ? d : nullptr, dg, db);
        if (param_grads) {  // the running statistics are not trained: their gradient is zero
          std::fill((*param_grads)[q + 2], (*param_grads)[q + 2] + C, 0.0f);
          std::fill((*param_grads)[q + 3], (*param_grads)[q + 3] + C, 0.0f);
        }
        break;
      }
      case LayerKind::Dropout:
        if (!need_dx) break;
        if (training_)
          cpu::dropout_backward(dy, keep_[i].data(), static_cast<size_t>(n) * l.out.size(),
                                dropout_scale(l.drop_probability()), d);
        else
          std::copy(dy, dy + static_cast<size_t>(n) * l.out.size(), d);
        break;
    }
    if (relu_before) --i;  // the ReLU is done
    if (!need_dx || (relu_before && i == 0 && !dx)) break;
    dy = d;
    which ^= 1;
  }
}

}  // namespace nudge
