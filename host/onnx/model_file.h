// Opening a model file of either format: ONNX when the name ends in ".onnx", safetensors otherwise. Every command
// that reads a model goes through here, so each accepts both.
#pragma once
#include <string>

#include "model.h"

namespace nudge {

bool is_onnx_path(const std::string& path);
// As written: what nudge train --init and nudge export read (a bn stays a bn, so it can be trained further).
Model load_model_file(const std::string& path);
// Its inference form (model_fold.h): what every other command runs.
Model load_inference_model(const std::string& path);

}  // namespace nudge
