// nudge robustness: robust accuracy of a model on dataset points by a cascade of attacks over an eps sweep, with
// results.csv (a row per point), summary.json, images.npy (the adversarial examples, or the clean image where the
// point stayed robust, [points x eps, H, W]) and robustness.png (robust accuracy against eps after each stage).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <limits>
#include <memory>

#include "atomic_file.h"
#include "backend.h"
#include "commands.h"
#include "dataset.h"
#include "errors.h"
#include "image_io.h"
#include "make_backend.h"
#include "model_loading.h"
#include "optimize_job.h"
#include "optimize_report.h"
#include "output_lock.h"
#include "robustness.h"
#include "robustness_plot.h"
#include "start_images.h"
#include "json_text.h"

namespace nudge::cli {

namespace {

struct RobustnessFlags {
  std::string split = "test", range, indices, eps = "0.3", norm = "linf", attacks = "standard";
  int count = 1000, apgd_iters = 100, fab_iters = 100, apgd_restarts = 1, targets = 9, square_queries = 5000, square_restarts = 1,
      chunk = 4096;
};

std::string stage_name(const RobustnessResult& r, size_t s) { return attack_name(r.stages[s].attack); }

void write_results_csv(const std::string& path, const RobustnessResult& r, const std::vector<int>& indices,
                       const std::vector<float>& eps) {
  AtomicFile f(path);
  std::string head = "index,label,clean_pred";
  for (float e : eps) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", e);
    const std::string t = std::string("_") + b;
    head += ",robust" + t + ",attack" + t + ",restart" + t + ",step" + t + ",linf" + t + ",l2" + t;
  }
  f.write(head + "\n");
  const int E = static_cast<int>(eps.size());
  char buf[160];
  for (int p = 0; p < r.points; ++p) {
    std::string line = std::to_string(indices[p]) + "," + std::to_string(r.label[p]) + "," + std::to_string(r.clean_pred[p]);
    for (int j = 0; j < E; ++j) {
      const size_t e = static_cast<size_t>(p) * E + j;
      const char* who = r.attack[e] ? attack_name(static_cast<AttackId>(r.attack[e])) : r.clean_pred[p] != r.label[p] ? "clean" : "";
      // who is one of a fixed set of names: no CSV quoting needed.
      std::snprintf(buf, sizeof buf, ",%d,%s,%d,%d,%.6g,%.6g", static_cast<int>(r.robust[e]), who, r.restart[e], r.step[e],
                    r.linf[e], r.l2[e]);
      line += buf;
    }
    f.write(line + "\n");
  }
  f.commit();
}

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
  cmd->add_option("--square-queries", f->square_queries, "Square: forward passes per point")->capture_default_str()->check(CLI::Range(1, 100000000));
  cmd->add_option("--square-restarts", f->square_restarts, "Square restarts")->capture_default_str()->check(CLI::Range(1, 10000));
  cmd->add_option("--chunk", f->chunk, "points evaluated at once (memory; results do not depend on it)")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  return [=]() {
    RobustnessConfig cfg;
    cfg.eps = parse_float_list(f->eps, "--eps");
    cfg.norm = parse_norm(f->norm);
    cfg.attacks = parse_attack_list(f->attacks);
    for (AttackId a : {AttackId::Square, AttackId::FabT})
      if (cfg.norm == Norm::L2 && std::find(cfg.attacks.begin(), cfg.attacks.end(), a) != cfg.attacks.end())
        throw InputError(std::string(attack_name(a)) + " is implemented for --norm linf only (--attacks apgd-ce,apgd-t runs L2)");
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
    cfg.chunk = f->chunk;
    cfg.seed = o->seed;
    if (!f->range.empty() && !f->indices.empty()) throw InputError("give --indices or --range, not both");
    const Model model = Model::load(o->model);
    const Dataset data = load_dataset(o->data, f->split);
    check_model_fits(model, o->model, data.rows, data.cols, 10);
    const int K = model.arch.num_classes();
    if (f->targets > K - 1)
      throw InputError("--targets " + std::to_string(f->targets) + ": the model has only " + std::to_string(K - 1) + " classes besides the label");
    // The points are chosen, and checked against the split, as `nudge optimize --init test|train` chooses its start
    // images.
    OptimizeJob pick;
    pick.init = f->split == "test" ? InitKind::Test : InitKind::Train;
    pick.count = f->count;
    if (!f->range.empty()) pick.range = parse_range(f->range, "--range");
    if (!f->indices.empty()) pick.indices = parse_index_list(f->indices, "--indices");
    const StartImages points(pick, &data, data.cols, data.rows);
    CreatedFolders made(ensure_output_dir(o->out));
    const OutputLock lock(o->out, command_line());
    auto backend = make_backend(o->device);
    backend->load_model(model);
    const int H = data.rows, W = data.cols, D = H * W, n = static_cast<int>(points.count());
    std::vector<float> x(static_cast<size_t>(n) * D);
    std::vector<int32_t> y(n);
    std::vector<int> idx(n);
    for (int i = 0; i < n; ++i) {
      points.fill(i, x.data() + static_cast<size_t>(i) * D);
      y[i] = points.label(i);
      idx[i] = static_cast<int>(points.dataset_index(i));
    }
    std::fprintf(stderr, "nudge robustness: %d points x %zu eps, %s, on %s\n", n, cfg.eps.size(), f->attacks.c_str(),
                 backend->name().c_str());
    // Points are keyed by their dataset index, so a slice of the split gives each point the draws it gets in a
    // larger run.
    const RobustnessResult r = evaluate_robustness(*backend, x.data(), y.data(), n, H, W, K, cfg, 0);

    const int E = static_cast<int>(cfg.eps.size());
    write_results_csv(o->out + "/results.csv", r, idx, cfg.eps);
    write_npy_f32(o->out + "/images.npy", {static_cast<int64_t>(n) * E, H, W}, r.images.data());
    nlohmann::json s;
    s["model"] = o->model;
    s["split"] = f->split;
    s["points"] = n;
    s["eps"] = cfg.eps;
    s["norm"] = f->norm;
    s["attacks"] = f->attacks;
    s["seed"] = o->seed;
    s["device"] = backend->name();
    s["path"] = "layers (logit_backprop)";
    s["settings"] = {{"apgd_iterations", f->apgd_iters}, {"apgd_restarts", f->apgd_restarts},
                     {"apgd_t_targets", f->targets}, {"square_queries", f->square_queries},
                     {"fab_t_iterations", f->fab_iters}, {"fab_t", {{"alpha_max", cfg.fab_t.alpha_max}, {"eta", cfg.fab_t.eta}, {"beta", cfg.fab_t.beta}}},
                     {"square_p_init", cfg.square.p_init}, {"apgd_rho", cfg.apgd_ce.rho},
                     {"apgd_momentum", cfg.apgd_ce.momentum}};
    s["clean_accuracy"] = static_cast<double>(r.clean_correct) / n;
    std::vector<double> final_robust(E, 0);
    // Every curve starts at eps 0, where robust accuracy is the clean accuracy.
    const double clean = static_cast<double>(r.clean_correct) / n;
    std::vector<PlotCurve> curves{{"clean", std::vector<double>(E + 1, clean)}};
    for (size_t st = 0; st < r.stages.size(); ++st) {
      const StageStats& g = r.stages[st];
      nlohmann::json js;
      js["attack"] = stage_name(r, st);
      js["attacked"] = g.attacked;
      std::vector<double> acc;
      for (int j = 0; j < E; ++j) acc.push_back(static_cast<double>(g.robust_after[j]) / n);
      js["robust_accuracy_after"] = acc;
      js[g.attack == AttackId::Square ? "queries" : "image_steps"] = g.cost;
      js["seconds"] = g.seconds;
      s["stages"].push_back(js);
      std::vector<double> curve{clean};
      curve.insert(curve.end(), acc.begin(), acc.end());
      curves.push_back({"+" + stage_name(r, st), curve});
      final_robust = acc;
    }
    // Recomputed from the per-point results, which the re-check vouched for: the number users cite.
    std::vector<double> recount(E, 0);
    for (size_t e = 0; e < r.robust.size(); ++e) recount[e % E] += r.robust[e];
    for (int j = 0; j < E; ++j) {
      recount[j] /= n;
      if (std::fabs(recount[j] - final_robust[j]) > 1e-12)
        throw InternalError("robust accuracy from the stages and from the points disagree");
    }
    s["robust_accuracy"] = recount;
    s["seconds"] = r.seconds;
    AtomicFile sf(o->out + "/summary.json");
    sf.write(json_text(s, 2) + "\n");
    sf.commit();
    std::vector<double> xs{0.0};
    xs.insert(xs.end(), cfg.eps.begin(), cfg.eps.end());
    write_accuracy_plot(o->out + "/robustness.png", "robust accuracy (" + f->norm + ", " + std::to_string(n) + " points)", xs, curves);
    made.keep();
    for (int j = 0; j < E; ++j)
      std::printf("eps %g: clean %.2f%%, robust %.2f%%\n", cfg.eps[j], 100.0 * r.clean_correct / n, 100 * recount[j]);
    std::printf("%d points in %.1fs on %s; results in %s\n", n, r.seconds, backend->name().c_str(), o->out.c_str());
    return 0;
  };
}

}  // namespace nudge::cli
