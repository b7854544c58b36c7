// A sequential CNN described by a string, e.g. the reference architecture
//   "1x28x28:conv24k3,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10"
// Layers:
//   convFkK[sS][pP]   F filters of KxK, stride S (default 1), P zeros of padding on every side (default 0)
//   poolK[sS][pP]     max-pooling over KxK windows, stride S (default K), P of padding (never chosen as a maximum;
//                     at most K/2, as PyTorch requires, so every window holds at least one real pixel)
//   avgpoolK[sS]      average over KxK windows, stride S (default K), no padding
//   relu, flatten, denseN
//   bn                batch normalisation right after a conv (per channel, over N, H and W) or a dense layer (per
//                     feature, over N): PyTorch's BatchNorm2d / BatchNorm1d with eps 1e-5 and momentum 0.1. Training
//                     normalises with the batch's (biased) variance and moves the running statistics towards the
//                     batch's, the variance's unbiased; everything else (inference, attacks, optimize) runs the
//                     model folded (model_fold.h), where each bn is part of the layer before it.
//   dropoutP          inverted dropout with drop probability P, a decimal in (0,1) of at most 6 digits after the point
//                     (dropout0.25): in training each value is zeroed with probability P and the rest scaled by
//                     1/(1-P); the identity everywhere else.
// Every output size is floor((in + 2P - K) / S) + 1 (PyTorch's and ONNX's rule without ceil_mode).
// Layout NCHW, flatten in (C,H,W) order as PyTorch does. The last dense layer's outputs are the logits; softmax is
// implied by the loss.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "window.h"

namespace nudge {

enum class LayerKind { Conv, Relu, MaxPool, AvgPool, Flatten, Dense, BatchNorm, Dropout };

// Batch normalisation's constants (PyTorch's defaults): the variance's epsilon and the running statistics' momentum.
constexpr double kBatchNormEps = 1e-5;
constexpr double kBatchNormMomentum = 0.1;

// What Architecture::parse accepts. Every activation (the input included) holds at most kMaxLayerElements values per
// image and every weight tensor at most kMaxParamElements, so that each count the library forms in int stays far from
// overflow and a hostile model file cannot ask for more than a few GiB before the first image runs. The reference
// model's widest activation is 24x26x26 = 16,224 values and its largest tensor 64x576 = 36,864.
constexpr int64_t kMaxLayerElements = int64_t{1} << 24;   // 64 MiB of floats per image
constexpr int64_t kMaxParamElements = int64_t{1} << 28;   // 1 GiB of floats per tensor
constexpr size_t kMaxLayers = 256;                        // every layer holds a chunk's activations

struct Shape3 {
  int c = 0, h = 0, w = 0;
  // 64-bit: the dims are checked one by one, and their product only after it is formed.
  int64_t size() const { return int64_t{c} * h * w; }
  bool operator==(const Shape3& o) const { return c == o.c && h == o.h && w == o.w; }
};

struct LayerSpec {
  LayerKind kind;
  int out_channels = 0;  // Conv: filters; Dense: units
  int kernel = 0;        // Conv: kernel size; pools: window
  int stride = 1;        // Conv and pools
  int pad = 0;           // Conv and MaxPool: on every side
  int drop_ppm = 0;      // Dropout: P in millionths (the grammar's 6 decimals, so to_string round-trips exactly)
  std::string name;      // "conv1", "dense2", "bn1" for layers with tensors, else ""
  Shape3 in, out;        // filled by Architecture::parse
  Window window() const { return {kernel, stride, pad}; }
  float drop_probability() const { return static_cast<float>(drop_ppm * 1e-6); }
};

// What a fresh model (Model::glorot) holds in a tensor.
enum class ParamInit { Glorot, Zero, One };

struct ParamSpec {
  std::string name;            // "conv1.weight"
  std::vector<int64_t> shape;  // PyTorch layout: conv [out,in,kh,kw], dense [out,in], bias [out], bn [C] each
  int layer = 0;               // index into Architecture::layers
  bool is_bias = false;        // an additive bias (conv, dense, and bn's shift beta)
  // bn's running mean and variance: saved with the model and set by training's forward passes, never by the
  // optimizer (PyTorch's "buffers"; Adam's moments for them stay zero).
  bool is_buffer = false;
  ParamInit init = ParamInit::Glorot;
};

struct Architecture {
  Shape3 input;
  std::vector<LayerSpec> layers;

  // Parses and shape-checks an architecture string; throws InputError naming the bad token.
  static Architecture parse(const std::string& text);
  static const char* reference_string();
  static Architecture reference() { return parse(reference_string()); }

  std::string to_string() const;
  int num_classes() const { return static_cast<int>(layers.back().out.size()); }
  std::vector<ParamSpec> params() const;
  size_t param_count() const;
  bool operator==(const Architecture& o) const { return to_string() == o.to_string(); }
  // Whether any layer behaves differently in training (bn, dropout): such a model is folded for inference.
  bool has_training_layers() const;
  bool has_batch_norm() const;
};

}  // namespace nudge
