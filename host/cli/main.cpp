// nudge's command line: turns exceptions into exit codes (2 for bad usage or input, 1 for internal failures).
#include <cstdio>
#include <iostream>
#include <map>

#include "allocator_policy.h"
#include "commands.h"
#include "errors.h"
#include "interrupt.h"

int main(int argc, char** argv) {
  using namespace nudge::cli;
  nudge::install_interrupt_handlers();
  nudge::keep_large_allocations_for_reuse();
  set_command_line(argc, argv);
  CLI::App app{"nudge: train small image CNNs and optimize their inputs in batches"};
  app.require_subcommand(1);
  std::map<std::string, Runner> runners;
  runners["train"] = add_train_command(app);
  runners["eval"] = add_eval_command(app);
  runners["predict"] = add_predict_command(app);
  runners["optimize"] = add_optimize_command(app);
  runners["visualize"] = add_visualize_command(app);
  runners["robustness"] = add_robustness_command(app);
  runners["merge"] = add_merge_command(app);
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
      std::fprintf(stderr, "nudge: unknown command '%s' (expected train, eval, predict, optimize, visualize, robustness or merge; see nudge --help)\n",
                   argv[1]);
      return 2;
    }
    std::fprintf(stderr, "nudge: %s (see nudge --help)\n", e.what());
    return 2;
  }
  try {
    for (CLI::App* sub : app.get_subcommands()) return runners.at(sub->get_name())();
  } catch (const nudge::Interrupted& e) {
    if (e.kept.empty())
      std::fprintf(stderr, "nudge: %s; nothing of this run was kept (the output folder holds the previous complete "
                   "results, if any)\n", e.what());
    else
      std::fprintf(stderr, "nudge: %s; %s\n", e.what(), e.kept.c_str());
    return 128 + e.signal;
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
