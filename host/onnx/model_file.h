// Opening a model file of either format: ONNX when the name ends in ".onnx", safetensors otherwise. Every command
// that reads a model goes through here, so each accepts both.
#pragma once
#include <string>

#include "model.h"

namespace nudge {

bool is_onnx_path(const std::string& path);
Model load_model_file(const std::string& path);

}  // namespace nudge
