#include "cpu_network.h"

#include <algorithm>

#include "cpu_layers.h"
#include "errors.h"

namespace nudge {

CpuNetwork::CpuNetwork(const Architecture& arch, bool batch_invariant) : arch_(arch), batch_invariant_(batch_invariant) {
  int p = 0;
  for (const LayerSpec& l : arch_.layers) {
    const bool has_params = l.kind == LayerKind::Conv || l.kind == LayerKind::Dense;
    param_index_.push_back(has_params ? p : -1);
    if (has_params) p += 2;
  }
  act_.resize(arch_.layers.size());
  argmax_.resize(arch_.layers.size());
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
    if (l.kind != LayerKind::Flatten) act_[i].resize(static_cast<size_t>(n) * l.out.size());
    if (l.kind == LayerKind::MaxPool) argmax_[i].resize(static_cast<size_t>(n) * l.out.size());
  }
  grad_a_.resize(static_cast<size_t>(n) * widest);
  grad_b_.resize(static_cast<size_t>(n) * widest);
  capacity_ = n;
}

template <class F>
void CpuNetwork::for_images(int n, size_t in_size, size_t out_size, F&& f) const {
  if (!batch_invariant_) {
    f(n, 0, 0);
    return;
  }
  for (int i = 0; i < n; ++i) f(1, i * in_size, i * out_size);
}

const float* CpuNetwork::out(int layer) const {
  // Flatten changes no bytes in NCHW: its output is its input.
  while (layer >= 0 && arch_.layers[layer].kind == LayerKind::Flatten) --layer;
  return layer < 0 ? x_ : act_[layer].data();
}

void CpuNetwork::forward(const std::vector<const float*>& params, const float* x, int n) {
  reserve(n);
  x_ = x;
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const LayerSpec& l = arch_.layers[i];
    const float* in = out(static_cast<int>(i) - 1);
    float* y = act_[i].data();
    switch (l.kind) {
      case LayerKind::Conv:
        for_images(n, l.in.size(), l.out.size(), [&](int m, size_t io, size_t oo) {
          cpu::conv2d_forward(in + io, m, l.in, params[param_index_[i]], params[param_index_[i] + 1], l.out_channels,
                              l.window(), y + oo);
        });
        break;
      case LayerKind::Relu: cpu::relu_forward(in, static_cast<size_t>(n) * l.out.size(), y); break;
      case LayerKind::MaxPool: cpu::maxpool_forward(in, n, l.in, l.window(), y, argmax_[i].data()); break;
      case LayerKind::AvgPool: cpu::avgpool_forward(in, n, l.in, l.window(), y); break;
      case LayerKind::Flatten: break;
      case LayerKind::Dense:
        for_images(n, l.in.size(), l.out.size(), [&](int m, size_t io, size_t oo) {
          cpu::dense_forward(in + io, m, l.in.size(), params[param_index_[i]], params[param_index_[i] + 1],
                             l.out_channels, y + oo);
        });
        break;
    }
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
    switch (l.kind) {
      case LayerKind::Conv:
        if (param_grads)
          cpu::conv2d_backward_filter(in, dy, n, l.in, l.out_channels, l.window(), (*param_grads)[param_index_[i]],
                                      (*param_grads)[param_index_[i] + 1]);
        if (need_dx)
          for_images(n, l.out.size(), l.in.size(), [&](int m, size_t oo, size_t io) {
            cpu::conv2d_backward_data(dy + oo, m, l.in, params[param_index_[i]], l.out_channels, l.window(), d + io);
          });
        break;
      case LayerKind::Relu:
        if (need_dx) cpu::relu_backward(act_[i].data(), dy, static_cast<size_t>(n) * l.out.size(), d);
        break;
      case LayerKind::MaxPool:
        if (need_dx) cpu::maxpool_backward(dy, argmax_[i].data(), n, l.in, l.window(), d);
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
        if (need_dx)
          for_images(n, l.out.size(), l.in.size(), [&](int m, size_t oo, size_t io) {
            cpu::dense_backward_data(dy + oo, m, l.in.size(), params[param_index_[i]], l.out_channels, d + io);
          });
        break;
    }
    if (!need_dx) break;
    dy = d;
    which ^= 1;
  }
}

}  // namespace nudge
