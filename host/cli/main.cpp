// nudge's command line: turns exceptions into exit codes (2 for bad usage or input, 1 for internal failures).
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

#include "allocator_policy.h"
#include "commands.h"
#include "errors.h"

namespace nudge::cli {

void add_common_options(CLI::App& cmd, CommonOptions& o, bool with_model, const std::string& out_help) {
  if (with_model) cmd.add_option("--model", o.model, "model file (safetensors)")->capture_default_str();
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

}  // namespace nudge::cli

int main(int argc, char** argv) {
  using namespace nudge::cli;
  nudge::keep_large_allocations_for_reuse();
  CLI::App app{"nudge: train small image CNNs and optimize their inputs in batches"};
  app.require_subcommand(1);
  std::map<std::string, Runner> runners;
  runners["train"] = add_train_command(app);
  runners["eval"] = add_eval_command(app);
  runners["predict"] = add_predict_command(app);
  runners["optimize"] = add_optimize_command(app);
  runners["visualize"] = add_visualize_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // CLI11 checks that a subcommand was given before it looks at stray words, so "nudge trian" would only be told
    // that a subcommand is required.
    if (argc > 1 && argv[1][0] != '-' && runners.count(argv[1]) == 0) {
      std::fprintf(stderr, "nudge: unknown command '%s' (expected train, eval, predict, optimize or visualize; see nudge --help)\n",
                   argv[1]);
      return 2;
    }
    std::fprintf(stderr, "nudge: %s (see nudge --help)\n", e.what());
    return 2;
  }
  try {
    for (CLI::App* sub : app.get_subcommands()) return runners.at(sub->get_name())();
  } catch (const nudge::InputError& e) {
    std::fprintf(stderr, "nudge: %s\n", e.what());
    return 2;
  } catch (const nudge::IoError& e) {  // its message starts "I/O error:"
    std::fprintf(stderr, "nudge: %s\n", e.what());
    return 1;
  } catch (const nudge::OutOfMemory& e) {
    std::fprintf(stderr, "nudge: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "nudge: out of memory (an allocation failed; try a smaller --chunk or --count)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nudge: internal error: %s\n", e.what());
    return 1;
  }
  return 1;
}
