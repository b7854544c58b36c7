// ONNX files: the exchange format that PyTorch (torch.onnx.export), Keras and TensorFlow (tf2onnx) write.
//
// Import reads a sequential CNN: a chain from the one input [N, C, H, W] to the one output, of Conv (padding and
// stride), Relu, MaxPool, AveragePool (no padding), GlobalAveragePool, BatchNormalization directly after a Conv or a
// dense layer (nudge's bn, which inference folds into it), Flatten or Reshape to [N, C*H*W], Gemm, MatMul (+ Add),
// Dropout (nudge's dropoutP), Identity, and a final Softmax or LogSoftmax (dropped: nudge's losses take logits). Anything else
// is refused with exit 2 and a message naming the node, its op and the attribute. Every size is checked before use:
// the file's against kMaxOnnxBytes before it is read, every tensor's dims against the architecture's caps before
// anything is allocated, every tensor's bytes against its dims.
// Export writes any nudge model as that same subset (opset 13; bn and dropout as BatchNormalization and Dropout in
// inference form), which import reads back to the same bits.
#pragma once
#include <cstdint>
#include <string>

#include "model.h"

namespace nudge {

// Larger ONNX files are refused before they are read: the biggest model nudge accepts is far smaller.
constexpr uint64_t kMaxOnnxBytes = uint64_t{1} << 30;

// True when this nudge was built with ONNX support (libonnx-dev); without it both functions below throw InputError
// saying so.
bool onnx_supported();

// The model in an in-memory ONNX file; `what` names it in messages. Throws InputError for anything nudge cannot
// read. The returned model's metadata has "nudge.source" (the producer and opset) and the file's metadata_props
// (where nudge's own export puts a model's metadata, e.g. the training recipe).
Model model_from_onnx(const std::string& bytes, const std::string& what);
Model read_onnx_model(const std::string& path);

// The ONNX bytes of `model`; its metadata goes into the file's metadata_props.
std::string model_to_onnx(const Model& model);
// Written atomically.
void write_onnx_model(const Model& model, const std::string& path);

}  // namespace nudge
