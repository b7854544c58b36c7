// ONNX entry points of a nudge built without libonnx-dev: each refuses, naming what to install.
#include "errors.h"
#include "onnx_model.h"

namespace nudge {

namespace {
[[noreturn]] void refuse(const std::string& what) {
  throw InputError(what + ": this nudge was built without ONNX support (install libonnx-dev libprotobuf-dev, then "
                          "rebuild: tools/build.sh)");
}
}  // namespace

bool onnx_supported() { return false; }
Model model_from_onnx(const std::string&, const std::string& what) { refuse(what); }
Model read_onnx_model(const std::string& path) { refuse(path); }
std::string model_to_onnx(const Model&) { refuse("ONNX export"); }
void write_onnx_model(const Model&, const std::string& path) { refuse(path); }

}  // namespace nudge
