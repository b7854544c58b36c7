// The options every command shares (commands.h), apart from main so that the fuzz harnesses can build commands.
#include <cerrno>
#include <cstdlib>

#include "commands.h"

namespace nudge::cli {

void add_common_options(CLI::App& cmd, CommonOptions& o, bool with_model, const std::string& out_help) {
  if (with_model) cmd.add_option("--model", o.model, "model file (.safetensors, or .onnx from PyTorch, Keras or TensorFlow)")->capture_default_str();
  cmd.add_option("--data", o.data, "folder with the four MNIST-format IDX files")->capture_default_str();
  cmd.add_option("--device", o.device, "auto | cpu | cuda")->capture_default_str();
  // CLI11 alone would read "-1" (and a 23-digit number) into the unsigned seed as 2^64-1.
  cmd.add_option("--seed", o.seed, "random seed (0 to 2^64-1)")->capture_default_str()->check(CLI::Validator(
      [](std::string& s) {
        errno = 0;
        char* end = nullptr;
        const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
        if (digits) std::strtoull(s.c_str(), &end, 10);
        return digits && errno != ERANGE ? std::string() : "'" + s + "' is not an integer from 0 to 2^64-1";
      },
      "UINT64"));
  if (!out_help.empty()) cmd.add_option("--out", o.out, out_help);
}

namespace {
std::string& command_line_storage() {
  static std::string line = "nudge";
  return line;
}
}  // namespace

void set_command_line(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) line += (i ? " " : "") + std::string(argv[i]);
  command_line_storage() = line;
}

const std::string& command_line() { return command_line_storage(); }

}  // namespace nudge::cli
