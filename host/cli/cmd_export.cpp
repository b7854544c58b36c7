// nudge export: a model in the other format. --onnx writes ONNX (opset 13) that onnx.checker accepts and that
// nudge reads back to the same bits; --safetensors writes nudge's own format (e.g. of an imported ONNX model, with
// the source it came from in its metadata).
#include <cstdio>
#include <map>
#include <memory>

#include "commands.h"
#include "errors.h"
#include "model_file.h"
#include "onnx_model.h"

namespace nudge::cli {

Runner add_export_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "write a model as ONNX (--onnx) or safetensors (--safetensors)");
  auto model = std::make_shared<std::string>("data/models/mnist_cnn.safetensors");
  auto onnx_out = std::make_shared<std::string>();
  auto st_out = std::make_shared<std::string>();
  cmd->add_option("--model", *model, "model file (.safetensors or .onnx)")->capture_default_str();
  auto* o1 = cmd->add_option("--onnx", *onnx_out, "write ONNX to this file");
  auto* o2 = cmd->add_option("--safetensors", *st_out, "write safetensors to this file");
  o1->excludes(o2);
  cmd->callback([=]() {
    if (onnx_out->empty() && st_out->empty()) throw CLI::ValidationError("export", "give --onnx OUT or --safetensors OUT");
  });
  return [=]() {
    const Model m = load_model_file(*model);
    if (!onnx_out->empty()) {
      write_onnx_model(m, *onnx_out);
      std::printf("%s -> %s (ONNX opset 13, %s, %zu parameters)\n", model->c_str(), onnx_out->c_str(),
                  m.arch.to_string().c_str(), m.arch.param_count());
    } else {
      std::map<std::string, std::string> meta = m.metadata;
      meta.erase("nudge.architecture");
      meta.erase("format");
      m.save(*st_out, meta);
      std::printf("%s -> %s (safetensors, %s, %zu parameters)\n", model->c_str(), st_out->c_str(),
                  m.arch.to_string().c_str(), m.arch.param_count());
    }
    return 0;
  };
}

}  // namespace nudge::cli
