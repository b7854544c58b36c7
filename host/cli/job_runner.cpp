#include "job_runner.h"

#include <cstdio>
#include <filesystem>
#include <memory>

#include "backend.h"
#include "commands.h"
#include "errors.h"
#include "make_backend.h"
#include "model_loading.h"
#include "optimize_engine.h"
#include "optimize_report.h"
#include "output_lock.h"

namespace nudge::cli {

void add_regularizer_flags(CLI::App& cmd, RegularizerConfig& reg) {
  cmd.add_option("--tv", reg.tv, "weight of total variation")->capture_default_str();
  cmd.add_flag("--tv-isotropic", reg.tv_isotropic, "isotropic instead of anisotropic total variation");
  cmd.add_option("--l2", reg.l2, "weight of L2 decay toward --l2-center")->capture_default_str();
  cmd.add_option("--l1", reg.l1, "weight of L1 decay toward --l2-center")->capture_default_str();
  cmd.add_option("--prior-decay", reg.prior_decay,
                 "from update --settle on, the TV, L2 and L1 weights are multiplied by this at every update (1: constant)")
      ->capture_default_str();
  cmd.add_option("--l2-center", reg.l2_center, "0.5 (mid-gray) or 0 (black)")->capture_default_str();
  cmd.add_option("--blur-every", reg.blur_every, "Gaussian blur after every k-th update (0: never)")->capture_default_str();
  cmd.add_option("--blur-sigma", reg.blur_sigma, "sigma of the first blur")->capture_default_str();
  cmd.add_option("--blur-decay", reg.blur_decay, "sigma is multiplied by this at each later blur")->capture_default_str();
  cmd.add_option("--jitter", reg.jitter, "shift the image by up to this many pixels each step")->capture_default_str();
  cmd.add_flag("--sigmoid", reg.sigmoid, "optimize w with pixels = sigmoid(w) instead of clamping");
  cmd.add_option("--settle", reg.settle_steps, "no iterate before this many updates counts as meeting the goal")->capture_default_str();
}

nlohmann::json regularizers_to_json(const RegularizerConfig& r) {
  return {{"tv", r.tv},           {"tv_isotropic", r.tv_isotropic}, {"l2", r.l2},
          {"l2_center", r.l2_center}, {"blur_every", r.blur_every}, {"blur_sigma", r.blur_sigma},
          {"blur_decay", r.blur_decay}, {"jitter", r.jitter},       {"sigmoid", r.sigmoid},
          {"settle_steps", r.settle_steps}, {"l1", r.l1}, {"prior_decay", r.prior_decay}};
}

nlohmann::json run_job(const JobRun& run, std::vector<float>* images) {
  const OptimizeJob& job = run.job;
  if (run.models.empty()) throw InputError("no --model given");
  std::vector<Model> models;
  for (const std::string& path : run.models) models.push_back(Model::load(path));
  const Model& primary = models.front();
  const int K = primary.arch.num_classes();
  for (size_t i = 1; i < models.size(); ++i)
    if (!(models[i].arch.input == primary.arch.input) || models[i].arch.num_classes() != K)
      throw InputError(run.models[i] + " does not take the same inputs and classes as " + run.models[0]);
  std::unique_ptr<Model> judge_model;
  if (!run.judge.empty()) {
    judge_model = std::make_unique<Model>(Model::load(run.judge));
    if (!(judge_model->arch.input == primary.arch.input) || judge_model->arch.num_classes() != K)
      throw InputError("judge " + run.judge + " does not take the same inputs and classes as " + run.models[0]);
    // The same file under two spellings (./a, a, a symlink) is the same model.
    for (const std::string& m : run.models) {
      std::error_code ec;
      if (m == run.judge || std::filesystem::equivalent(m, run.judge, ec))
        throw InputError("the judge " + run.judge + " is also an optimized-against model (" + m + ")");
    }
  }
  validate_job(job, K);
  std::unique_ptr<Dataset> data;
  if (job.init == InitKind::Test || job.init == InitKind::Train) {
    data = std::make_unique<Dataset>(load_dataset(run.data, job.init == InitKind::Test ? "test" : "train"));
    check_model_fits(primary, run.models[0], data->rows, data->cols, 10);
  }
  const StartImages starts(job, data.get(), primary.arch.input.w, primary.arch.input.h);
  const long rows = starts.count() * static_cast<long>(targets_for(job, 0, 0, K).size());

  // The output folder is checked before any backend is made, so that a bad --out is the one message printed; the
  // folders made for it are removed again if the job fails before its results are written (they are then empty).
  CreatedFolders made(ensure_output_dir(run.out));
  const OutputLock lock(run.out, command_line());
  if (lock.removed_temporaries() > 0 && !run.quiet)
    std::fprintf(stderr, "nudge: removed %d temporary file%s of an earlier, interrupted job in %s\n",
                 lock.removed_temporaries(), lock.removed_temporaries() == 1 ? "" : "s", run.out.c_str());
  std::vector<std::unique_ptr<Backend>> backends;
  for (const Model& m : models) {
    backends.push_back(make_backend(run.device));
    backends.back()->load_model(m);
    const std::string refusal = backends.back()->path_refusal(job.step.path);
    if (!refusal.empty()) throw InputError(refusal);
  }
  if (job.step.path == OptimizePath::Fused && (job.reg.any() || models.size() > 1))
    throw InputError("--path fused runs plain jobs only: priors and ensembles use the host-regularised path");
  std::unique_ptr<Backend> judge;
  if (judge_model) {
    judge = make_backend(run.device);
    judge->load_model(*judge_model);
  }
  OptimizeReport report(run.out, rows, K, primary.arch.input.h, primary.arch.input.w, job.steps, job.target_dist,
                        judge.get());
  report.keep_all_images(images != nullptr);
  std::vector<Backend*> ensemble;
  for (size_t i = 1; i < backends.size(); ++i) ensemble.push_back(backends[i].get());
  Backend& backend = *backends.front();
  if (!run.quiet)
    std::fprintf(stderr, "nudge: %ld rows x %zu entries, %s %s lr %g, %d steps, %zu model%s, on %s\n", rows,
                 (job.eps.empty() ? 1 : job.eps.size()) * job.restarts, to_string(job.step.optimizer),
                 to_string(job.step.loss), job.step.lr, job.steps, models.size(), models.size() > 1 ? "s" : "",
                 backend.name().c_str());
  const EngineStats stats = run_optimize(backend, primary, job, starts, report, !run.quiet, ensemble);
  nlohmann::json spec = run.spec;
  spec["models"] = run.models;
  if (!run.judge.empty()) spec["judge"] = run.judge;
  spec["regularizers"] = regularizers_to_json(job.reg);
  const nlohmann::json s = report.finish(spec, stats, backend.name());
  made.keep();
  if (images) *images = report.all_images();

  std::printf("%ld rows: success %.2f%% (%ld/%ld)", rows, 100.0 * s["success_rate"].get<double>(),
              s["successes"].get<long>(), rows);
  if (s.contains("success_rate_correct_before"))
    std::printf(", %.2f%% of the %ld the model had right", 100.0 * s["success_rate_correct_before"].get<double>(),
                s["correct_before"].get<long>());
  if (!s["median_steps_to_success"].is_null()) std::printf("; median %g steps", s["median_steps_to_success"].get<double>());
  if (s.contains("soft_within_0.01"))
    std::printf("; %.2f%% within 0.01 of the target distribution", 100.0 * s["soft_within_0.01"].get<double>());
  if (s.contains("judge_agreement")) std::printf("; judge agrees on %.2f%%", 100.0 * s["judge_agreement"].get<double>());
  std::printf("; %.0f image-steps/s, %.2fs on %s (%s path); results in %s\n", s["image_steps_per_s"].get<double>(),
              stats.seconds, backend.name().c_str(), stats.path.c_str(), run.out.c_str());
  return s;
}

}  // namespace nudge::cli
