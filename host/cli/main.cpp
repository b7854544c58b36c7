// nudge's command line: turns exceptions into exit codes (2 for bad usage or input, 1 for internal failures).
#include <cstdio>
#include <iostream>
#include <map>

#include "allocator_policy.h"
#include "commands.h"
#include "errors.h"
#include "exit_status.h"
#include "interrupt.h"
#include "make_backend.h"
#include "rank_world.h"

namespace {

int run_command(int argc, char** argv) {
  using namespace nudge::cli;
  const nudge::dist::World& world = nudge::dist::world();
  // In an MPI job, rank 0 speaks for every rank (they parse the same command line and fail alike).
  const bool speak = world.rank == 0;
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
  runners["export"] = add_export_command(app);
  runners["pca"] = add_pca_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return speak ? app.exit(e) : 0;
  } catch (const CLI::CallForAllHelp& e) {
    return speak ? app.exit(e) : 0;
  } catch (const CLI::ParseError& e) {
    // CLI11 checks that a subcommand was given before it looks at stray words, so "nudge trian" would only be told
    // that a subcommand is required.
    if (argc > 1 && argv[1][0] != '-' && runners.count(argv[1]) == 0) {
      if (speak)
        std::fprintf(stderr, "nudge: unknown command '%s' (expected train, eval, predict, optimize, visualize, robustness, merge or export; see nudge --help)\n",
                     argv[1]);
      return 2;
    }
    if (speak) std::fprintf(stderr, "nudge: %s (see nudge --help)\n", e.what());
    return 2;
  }
  try {
    for (CLI::App* sub : app.get_subcommands()) {
      const std::string name = sub->get_name();
      if (world.size > 1 && name != "optimize" && name != "visualize" && name != "robustness") {
        if (speak)
          std::fprintf(stderr, "nudge: nudge %s runs in one process; under mpirun (here %d ranks) only optimize, "
                       "visualize and robustness share their work across ranks: run it without mpirun\n", name.c_str(), world.size);
        return 2;
      }
      return runners.at(name)();
    }
  } catch (...) {
    const ExitStatus status = exit_status_of(std::current_exception());
    if (!status.message.empty()) std::fprintf(stderr, "nudge: %s\n", status.message.c_str());
    return status.code;
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  nudge::install_interrupt_handlers();
  nudge::keep_large_allocations_for_reuse();
  nudge::dist::start(&argc, &argv);
  nudge::cli::set_command_line(argc, argv);
  nudge::set_local_rank(nudge::dist::world().local_rank, nudge::dist::world().rank != 0);
  const int code = run_command(argc, argv);
  nudge::dist::finish();
  return code;
}
