// nudge optimize: batched input optimization toward per-image targets through a frozen model.
#include <cstdio>
#include <memory>

#include "backend.h"
#include "commands.h"
#include "errors.h"
#include "job_runner.h"

namespace nudge::cli {

namespace {

// Flags whose every value must be checked are read as text (CLI11 would take "nan" and "inf" as floats, and
// "-1" for an unsigned seed as 2^64-1).
struct OptimizeFlags {
  std::string init = "noise", indices, range, target, target_dist, loss = "ce", optimizer = "adam", norm, eps;
  std::string lr, kappa, stop_at, stop_kl;
  OptimizeJob job;
};

// Whether the user gave the flag: only then is its value checked (the defaults mean "not set").
bool given(const CLI::App& cmd, const char* flag) { return cmd.count(flag) > 0; }

nlohmann::json job_to_json(const OptimizeFlags& f, const OptimizeJob& j, const std::string& model) {
  nlohmann::json s;
  s["model"] = model;
  s["init"] = f.init;
  if (j.init == InitKind::Pca) s["start_components"] = j.pca_start_components;
  s["count"] = j.count;
  if (!f.indices.empty()) s["indices"] = f.indices;
  if (!f.range.empty()) s["range"] = f.range;
  if (!j.image_dir.empty()) s["image_dir"] = j.image_dir;
  if (!j.target_dist.empty()) s["target_dist"] = j.target_dist;
  else s["target"] = j.target.text;
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

Runner add_optimize_command(CLI::App& app, std::function<void(const JobRun&)> execute) {
  auto* cmd = app.add_subcommand("optimize", "optimize batches of input images toward targets");
  auto o = std::make_shared<CommonOptions>();
  o->out = "out/optimize";
  auto f = std::make_shared<OptimizeFlags>();
  add_common_options(*cmd, *o, false, "output folder (results.csv, summary.json, images.npy, grid.png)");
  auto models = std::make_shared<std::vector<std::string>>();
  auto judge = std::make_shared<std::string>();
  cmd->add_option("--model", *models, "model file (.safetensors or .onnx); repeat for an ensemble every image must convince")
      ->default_str(o->model);
  cmd->add_option("--judge", *judge, "an independent model that scores the results afterwards (never optimized against)");
  add_regularizer_flags(*cmd, f->job.reg);
  cmd->add_option("--init", f->init, "start images: noise | gauss | gray | pca (draws from --pca's Gaussian) | test | train | a folder of PNG/PGM files")->capture_default_str();
  cmd->add_option("--start-components", f->job.pca_start_components,
                  "--init pca: how many leading components the start images draw")->capture_default_str();
  cmd->add_option("--count", f->job.count, "number of generated start images, or the first N dataset images")->capture_default_str();
  cmd->add_option("--indices", f->indices, "dataset start images, e.g. 61,307");
  cmd->add_option("--range", f->range, "dataset start images START:END, e.g. 0:1000");
  cmd->add_option("--target", f->target, "CLASS | all (image i -> i mod 10) | other (9 rows per image) | next | untargeted");
  cmd->add_option("--target-dist", f->target_dist, "a distribution over the classes, e.g. 0,0,0.5,0.5,0,0,0,0,0,0");
  cmd->add_option("--loss", f->loss, "ce | kl | cw")->capture_default_str();
  cmd->add_option("--optimizer", f->optimizer, "adam | sgd | sign")->capture_default_str();
  cmd->add_option("--lr", f->lr, "step size")->default_str(std::to_string(f->job.step.lr));
  cmd->add_option("--steps", f->job.steps, "update budget per image")->capture_default_str();
  cmd->add_option("--eps", f->eps, "radius of the ball around the start image; a list runs each as extra entries");
  cmd->add_option("--norm", f->norm, "linf | l2 (with --eps)");
  cmd->add_flag("--random-start", f->job.random_start, "start at a random point inside the ball");
  cmd->add_option("--restarts", f->job.restarts, "random restarts per image (best reported)")->capture_default_str();
  cmd->add_option("--kappa", f->kappa, "Carlini-Wagner confidence margin")->default_str("0");
  cmd->add_option("--stop-at", f->stop_at, "stop an image once its target class has probability >= this");
  cmd->add_option("--stop-kl", f->stop_kl, "stop a soft-target image once KL(target||p) <= this");
  cmd->add_option("--chunk", f->job.chunk, "images per chunk (default: the backend's choice)");
  auto path = std::make_shared<std::string>("auto");
  cmd->add_option("--path", *path, "auto | fused | layers: the GPU implementation (fused: one kernel per step for the reference architecture)")
      ->capture_default_str();
  cmd->add_flag("--quiet", "no progress bar");
  cmd->add_flag("--resume", "continue the interrupted job in --out from its journal (the same command otherwise)");
  auto shard = std::make_shared<std::string>();
  cmd->add_option("--shard", *shard, "K/N: compute part K (0-based) of N of the rows; join the parts with nudge merge");
  return [=]() {
    OptimizeJob job = f->job;
    if (given(*cmd, "--lr")) job.step.lr = parse_finite(f->lr, "--lr");
    if (given(*cmd, "--kappa")) job.step.cw_kappa = parse_finite(f->kappa, "--kappa");
    if (given(*cmd, "--chunk") && job.chunk < 1)
      throw InputError("--chunk " + std::to_string(job.chunk) + ": must be at least 1 (leave it out for the backend's choice)");
    job.seed = o->seed;
    job.init = parse_init(f->init, &job.image_dir);
    load_pca_prior(job);
    job.target = f->target;
    if (!f->target_dist.empty()) job.target_dist = parse_float_list(f->target_dist, "--target-dist");
    job.step.loss = parse_loss(f->loss);
    job.step.optimizer = parse_optimizer(f->optimizer);
    job.step.path = parse_optimize_path(*path);
    if (!f->norm.empty()) job.step.norm = parse_norm(f->norm);
    if (!f->eps.empty()) job.eps = parse_float_list(f->eps, "--eps");
    if (!f->indices.empty() && !f->range.empty()) throw InputError("give --indices or --range, not both");
    if (!f->indices.empty()) job.indices = parse_index_list(f->indices, "--indices");
    if (!f->range.empty()) job.range = parse_range(f->range, "--range");
    const bool dataset = job.init == InitKind::Test || job.init == InitKind::Train;
    if ((!job.indices.empty() || !job.range.empty()) && !dataset)
      throw InputError("--indices/--range select dataset images: use them with --init test or train");
    if (given(*cmd, "--count") && (!job.indices.empty() || !job.range.empty()))
      throw InputError("--count " + std::to_string(job.count) + " is ignored with --indices/--range: give one of them");
    if (given(*cmd, "--count") && job.init == InitKind::Images)
      throw InputError("--count " + std::to_string(job.count) + ": --init " + job.image_dir +
                       " uses every image in the folder; leave --count out");
    // The engine runs such copies (its tests use them to check tie-breaking), but a user asking for them wants
    // something else.
    if (job.restarts > 1 && !job.random_start)
      throw InputError("--restarts " + std::to_string(job.restarts) +
                       " without --random-start runs identical copies; add --random-start (with --eps)");
    if (given(*cmd, "--stop-at")) {
      const float p = parse_finite(f->stop_at, "--stop-at");
      if (!(p > 0 && p <= 1)) throw InputError("--stop-at: '" + f->stop_at + "' is not a probability in (0, 1]");
      job.step.stop_prob = p;
      job.step.early_stop = true;
    }
    if (given(*cmd, "--stop-kl")) {
      const float kl = parse_finite(f->stop_kl, "--stop-kl");
      if (!(kl >= 0)) throw InputError("--stop-kl: '" + f->stop_kl + "' must be >= 0");
      job.step.stop_kl = kl;
      job.step.early_stop = true;
    }

    JobRun run;
    run.job = job;
    run.models = models->empty() ? std::vector<std::string>{o->model} : *models;
    run.judge = *judge;
    run.data = o->data;
    run.device = o->device;
    run.out = o->out;
    run.spec = job_to_json(*f, job, run.models.front());
    run.quiet = cmd->count("--quiet") > 0;
    run.resume = cmd->count("--resume") > 0;
    if (given(*cmd, "--shard")) parse_shard(*shard, &run.shard, &run.shards);
    if (execute)
      execute(run);
    else
      run_job(run, nullptr);
    return 0;
  };
}

}  // namespace nudge::cli
