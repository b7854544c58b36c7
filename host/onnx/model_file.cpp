#include "model_file.h"

#include "model_fold.h"
#include "onnx_model.h"

namespace nudge {

bool is_onnx_path(const std::string& path) {
  const std::string ext = ".onnx";
  if (path.size() < ext.size()) return false;
  std::string tail = path.substr(path.size() - ext.size());
  for (char& c : tail) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return tail == ext;
}

Model load_model_file(const std::string& path) { return is_onnx_path(path) ? read_onnx_model(path) : Model::load(path); }

Model load_inference_model(const std::string& path) { return fold_for_inference(load_model_file(path)); }

}  // namespace nudge
