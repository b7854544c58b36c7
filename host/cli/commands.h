// Each subcommand registers its options on the shared CLI11 app and returns the function that runs it.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace nudge::cli {

using Runner = std::function<int()>;

// Options every command shares.
struct CommonOptions {
  std::string model = "data/models/mnist_cnn.safetensors";
  std::string data = "data/mnist";
  std::string device = "auto";
  uint64_t seed = 1;  // read through a check that refuses "-1" and values past 2^64-1
  std::string out;
};

void add_common_options(CLI::App& cmd, CommonOptions& o, bool with_model, const std::string& out_help);

// The command line as invoked (set once by main), for the output folder's lock: a refused job names the holder's.
void set_command_line(int argc, char** argv);
const std::string& command_line();

Runner add_train_command(CLI::App& app);
Runner add_eval_command(CLI::App& app);
Runner add_predict_command(CLI::App& app);
struct JobRun;
// `execute` receives the job the flags describe; by default it is run (the fuzz harness only validates it).
Runner add_optimize_command(CLI::App& app, std::function<void(const JobRun&)> execute = nullptr);
Runner add_visualize_command(CLI::App& app);
Runner add_robustness_command(CLI::App& app);
Runner add_merge_command(CLI::App& app);
Runner add_export_command(CLI::App& app);
Runner add_pca_command(CLI::App& app);

}  // namespace nudge::cli
