// nudge optimize: batched input optimization toward per-image targets through a frozen model.
#include <cstdio>
#include <memory>

#include "backend.h"
#include "commands.h"
#include "errors.h"
#include "job_runner.h"

namespace nudge::cli {

namespace {

struct OptimizeFlags {
  std::string init = "noise", indices, range, target, target_dist, loss = "ce", optimizer = "adam", norm, eps;
  float stop_at = 0, stop_kl = -1;
  OptimizeJob job;
};

InitKind parse_init(const std::string& s, std::string* dir) {
  if (s == "noise") return InitKind::Noise;
  if (s == "gauss") return InitKind::Gauss;
  if (s == "gray") return InitKind::Gray;
  if (s == "test") return InitKind::Test;
  if (s == "train") return InitKind::Train;
  *dir = s;
  return InitKind::Images;
}

nlohmann::json job_to_json(const OptimizeFlags& f, const OptimizeJob& j, const std::string& model) {
  nlohmann::json s;
  s["model"] = model;
  s["init"] = f.init;
  s["count"] = j.count;
  if (!f.indices.empty()) s["indices"] = f.indices;
  if (!f.range.empty()) s["range"] = f.range;
  if (!j.target_dist.empty()) s["target_dist"] = j.target_dist;
  else s["target"] = j.target;
  s["loss"] = to_string(j.step.loss);
  s["optimizer"] = to_string(j.step.optimizer);
  s["lr"] = j.step.lr;
  s["steps"] = j.steps;
  s["norm"] = to_string(j.step.norm);
  s["eps"] = j.eps;
  s["random_start"] = j.random_start;
  s["restarts"] = j.restarts;
  s["early_stop"] = j.step.early_stop;
  s["stop_at"] = j.step.stop_prob;
  s["stop_kl"] = j.step.stop_kl;
  s["seed"] = j.seed;
  return s;
}

}  // namespace

Runner add_optimize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("optimize", "optimize batches of input images toward targets");
  auto o = std::make_shared<CommonOptions>();
  o->out = "out/optimize";
  auto f = std::make_shared<OptimizeFlags>();
  add_common_options(*cmd, *o, false, "output folder (results.csv, summary.json, images.npy, grid.png)");
  auto models = std::make_shared<std::vector<std::string>>();
  auto judge = std::make_shared<std::string>();
  cmd->add_option("--model", *models, "model file (safetensors); repeat for an ensemble every image must convince")
      ->default_str(o->model);
  cmd->add_option("--judge", *judge, "an independent model that scores the results afterwards (never optimized against)");
  add_regularizer_flags(*cmd, f->job.reg);
  cmd->add_option("--init", f->init, "start images: noise | gauss | gray | test | train | a folder of PNG/PGM files")->capture_default_str();
  cmd->add_option("--count", f->job.count, "number of generated start images, or the first N dataset images")->capture_default_str();
  cmd->add_option("--indices", f->indices, "dataset start images, e.g. 61,307");
  cmd->add_option("--range", f->range, "dataset start images START:END, e.g. 0:1000");
  cmd->add_option("--target", f->target, "CLASS | all (image i -> i mod 10) | other (9 rows per image) | next | untargeted");
  cmd->add_option("--target-dist", f->target_dist, "a distribution over the classes, e.g. 0,0,0.5,0.5,0,0,0,0,0,0");
  cmd->add_option("--loss", f->loss, "ce | kl | cw")->capture_default_str();
  cmd->add_option("--optimizer", f->optimizer, "adam | sgd | sign")->capture_default_str();
  cmd->add_option("--lr", f->job.step.lr, "step size")->capture_default_str();
  cmd->add_option("--steps", f->job.steps, "update budget per image")->capture_default_str();
  cmd->add_option("--eps", f->eps, "radius of the ball around the start image; a list runs each as extra entries");
  cmd->add_option("--norm", f->norm, "linf | l2 (with --eps)");
  cmd->add_flag("--random-start", f->job.random_start, "start at a random point inside the ball");
  cmd->add_option("--restarts", f->job.restarts, "random restarts per image (best reported)")->capture_default_str();
  cmd->add_option("--kappa", f->job.step.cw_kappa, "Carlini-Wagner confidence margin")->capture_default_str();
  cmd->add_option("--stop-at", f->stop_at, "stop an image once its target class has probability >= this");
  cmd->add_option("--stop-kl", f->stop_kl, "stop a soft-target image once KL(target||p) <= this");
  cmd->add_option("--chunk", f->job.chunk, "images per chunk (default: the backend's choice)");
  auto path = std::make_shared<std::string>("auto");
  cmd->add_option("--path", *path, "auto | fused | layers: the GPU implementation (fused: one kernel per step for the reference architecture)")
      ->capture_default_str();
  cmd->add_flag("--quiet", "no progress bar");
  return [=]() {
    OptimizeJob job = f->job;
    job.seed = o->seed;
    job.init = parse_init(f->init, &job.image_dir);
    job.target = f->target;
    if (!f->target_dist.empty()) job.target_dist = parse_float_list(f->target_dist, "--target-dist");
    job.step.loss = parse_loss(f->loss);
    job.step.optimizer = parse_optimizer(f->optimizer);
    if (!f->norm.empty()) job.step.norm = parse_norm(f->norm);
    if (!f->eps.empty()) job.eps = parse_float_list(f->eps, "--eps");
    if (!f->indices.empty() && !f->range.empty()) throw InputError("give --indices or --range, not both");
    if (!f->indices.empty()) job.indices = parse_index_list(f->indices, "--indices");
    if (!f->range.empty()) job.indices = parse_range(f->range, "--range");
    if (!job.indices.empty() && job.init != InitKind::Test && job.init != InitKind::Train)
      throw InputError("--indices/--range select dataset images: use them with --init test or train");
    if (f->stop_at < 0 || f->stop_at > 1) throw InputError("--stop-at must be a probability in (0, 1]");
    if (f->stop_at > 0) {
      job.step.stop_prob = f->stop_at;
      job.step.early_stop = true;
    }
    if (f->stop_kl >= 0) {
      job.step.stop_kl = f->stop_kl;
      job.step.early_stop = true;
    }

    JobRun run;
    run.job = job;
    run.models = models->empty() ? std::vector<std::string>{o->model} : *models;
    run.judge = *judge;
    run.data = o->data;
    run.device = o->device;
    run.path = *path;
    run.out = o->out;
    run.spec = job_to_json(*f, job, run.models.front());
    run.quiet = cmd->count("--quiet") > 0;
    run_job(run, nullptr);
    return 0;
  };
}

}  // namespace nudge::cli
