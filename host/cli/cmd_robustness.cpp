// nudge robustness: robust accuracy of a model on dataset points by a cascade of attacks over an eps sweep, with
// results.csv (a row per point), summary.json, images.npy (the adversarial examples, or the clean image where the
// point stayed robust, [points x eps, H, W]) and robustness.png (robust accuracy against eps after each stage). The
// flags become a RobustnessRun here; robustness_runner.cpp runs it (journal, --resume, MPI ranks).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>
#include <memory>

#include "commands.h"
#include "errors.h"
#include "model_loading.h"
#include "optimize_job.h"
#include "robustness.h"
#include "robustness_runner.h"

namespace nudge::cli {

namespace {

struct RobustnessFlags {
  std::string split = "test", range, indices, eps = "0.3", norm = "linf", attacks = "standard";
  int count = 1000, apgd_iters = 100, fab_iters = 100, apgd_restarts = 1, targets = 9, square_queries = 5000, square_restarts = 1,
      chunk = 4096;
  bool resume = false, quiet = false, square_rescale = false;
};

}  // namespace

Runner add_robustness_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("robustness", "robust accuracy under a cascade of attacks (APGD-CE, APGD-T, FAB-T, Square) over an eps sweep");
  auto o = std::make_shared<CommonOptions>();
  o->out = "out/robustness";
  auto f = std::make_shared<RobustnessFlags>();
  add_common_options(*cmd, *o, true, "output folder (results.csv, summary.json, images.npy, robustness.png)");
  const int kMaxInt = std::numeric_limits<int>::max();
  cmd->add_option("--split", f->split, "test | train")->capture_default_str()->check(CLI::IsMember({"test", "train"}));
  cmd->add_option("--count", f->count, "the first N images of the split")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  cmd->add_option("--range", f->range, "images START:END of the split");
  cmd->add_option("--indices", f->indices, "images of the split, e.g. 61,307");
  cmd->add_option("--eps", f->eps, "radii, e.g. 0.1,0.2,0.3 (each an independent evaluation)")->capture_default_str();
  cmd->add_option("--norm", f->norm, "linf | l2")->capture_default_str()->check(CLI::IsMember({"linf", "l2"}));
  cmd->add_option("--attacks", f->attacks, "standard (apgd-ce, apgd-t, fab-t, square) or a list of apgd-ce, apgd-t, apgd-dlr, fab-t, square")
      ->capture_default_str();
  cmd->add_option("--apgd-iters", f->apgd_iters, "APGD iterations per restart and target")->capture_default_str()->check(CLI::Range(1, 1000000));
  cmd->add_option("--apgd-restarts", f->apgd_restarts, "APGD restarts (APGD-T: per target)")->capture_default_str()->check(CLI::Range(1, 10000));
  cmd->add_option("--fab-iters", f->fab_iters, "FAB-T iterations per target")->capture_default_str()->check(CLI::Range(1, 1000000));
  cmd->add_option("--targets", f->targets, "APGD-T and FAB-T target classes (the most likely ones besides the label)")->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("--square-queries", f->square_queries, "Square: forward passes per point")->capture_default_str()->check(CLI::Range(1, static_cast<int>(kMaxAttackSteps)));
  cmd->add_option("--square-restarts", f->square_restarts, "Square restarts")->capture_default_str()->check(CLI::Range(1, 10000));
  cmd->add_flag("--square-rescale", f->square_rescale,
                "Square: lay the p schedule over --square-queries (default: the paper's 10,000 iterations, as AutoAttack)");
  cmd->add_option("--chunk", f->chunk, "points evaluated at once (memory; results do not depend on it); the journal keeps each chunk")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  cmd->add_flag("--resume", f->resume, "continue the interrupted evaluation in --out from its journal (the same command)");
  cmd->add_flag("--quiet", f->quiet, "no progress bars");
  return [=]() {
    RobustnessConfig cfg;
    cfg.eps = parse_float_list(f->eps, "--eps");
    cfg.norm = parse_norm(f->norm);
    cfg.attacks = parse_attack_list(f->attacks);
    cfg.apgd_ce.iterations = cfg.apgd_t.iterations = cfg.apgd_dlr.iterations = f->apgd_iters;
    cfg.apgd_ce.restarts = cfg.apgd_t.restarts = cfg.apgd_dlr.restarts = f->apgd_restarts;
    cfg.apgd_ce.loss = ApgdLoss::Ce;
    cfg.apgd_dlr.loss = ApgdLoss::Dlr;
    cfg.apgd_t.loss = ApgdLoss::DlrTargeted;
    cfg.apgd_t.targets = f->targets;
    cfg.fab_t.iterations = f->fab_iters;
    cfg.fab_t.targets = f->targets;
    cfg.square.queries = f->square_queries;
    cfg.square.restarts = f->square_restarts;
    cfg.square.rescale = f->square_rescale;
    cfg.chunk = f->chunk;
    cfg.seed = o->seed;
    if (!f->range.empty() && !f->indices.empty()) throw InputError("give --indices or --range, not both");
    RobustnessRun run;
    run.cfg = cfg;
    run.model = o->model;
    run.data = o->data;
    run.split = f->split;
    run.device = o->device;
    run.out = o->out;
    run.resume = f->resume;
    run.quiet = f->quiet;
    run.pick.init = f->split == "test" ? InitKind::Test : InitKind::Train;
    run.pick.count = f->count;
    if (!f->range.empty()) run.pick.range = parse_range(f->range, "--range");
    if (!f->indices.empty()) run.pick.indices = parse_index_list(f->indices, "--indices");
    // Everything that changes the results (not --chunk, --device, --quiet or the MPI ranks).
    nlohmann::json& s = run.spec;
    s["model"] = o->model;
    s["split"] = f->split;
    if (!f->indices.empty()) s["indices"] = f->indices;
    else if (!f->range.empty()) s["range"] = f->range;
    else s["count"] = f->count;
    s["eps"] = cfg.eps;
    s["norm"] = f->norm;
    s["attacks"] = f->attacks;
    s["seed"] = o->seed;
    s["settings"] = {{"apgd_iterations", f->apgd_iters}, {"apgd_restarts", f->apgd_restarts},
                     {"apgd_t_targets", f->targets}, {"square_queries", f->square_queries},
                     {"square_restarts", f->square_restarts}, {"fab_t_iterations", f->fab_iters},
                     {"fab_t", {{"alpha_max", cfg.fab_t.alpha_max}, {"eta", cfg.fab_t.eta}, {"beta", cfg.fab_t.beta}}},
                     {"square_p_init", cfg.square.p_init},
                     {"square_schedule_iterations", cfg.square.schedule_iterations()}, {"apgd_rho", cfg.apgd_ce.rho},
                     {"apgd_momentum", cfg.apgd_ce.momentum}};
    return run_robustness(run);
  };
}

}  // namespace nudge::cli
