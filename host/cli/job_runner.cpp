#include "job_runner.h"

#include <chrono>
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
#include "atomic_file.h"
#include "fnv1a.h"
#include "interrupt.h"
#include "job_journal.h"
#include "job_sink.h"
#include "json_text.h"
#include "result_commit.h"

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

void parse_shard(const std::string& text, int* shard, int* shards) {
  const size_t slash = text.find('/');
  const auto number = [&](const std::string& t, int* out) {
    if (t.empty() || t.size() > 7 || t.find_first_not_of("0123456789") != std::string::npos) return false;
    *out = std::stoi(t);
    return true;
  };
  if (slash == std::string::npos || !number(text.substr(0, slash), shard) || !number(text.substr(slash + 1), shards) ||
      *shards < 1 || *shard >= *shards)
    throw InputError("--shard '" + text + "': expected K/N with 0 <= K < N <= 9999999, e.g. 0/4");
}

namespace {

// "fnv1a64:0123456789abcdef" of a model file: a resume must run against the very weights its journal was made with.
std::string file_digest(const std::string& path) {
  const std::string bytes = read_file(path);
  char text[32];
  std::snprintf(text, sizeof text, "fnv1a64:%016llx", static_cast<unsigned long long>(fnv1a64(bytes.data(), bytes.size())));
  return text;
}

// The job as summary.json states it and as a resume must match it: what the user asked for, the models (by path and
// content) and the shard. Not the device, --chunk or --quiet, which change how the rows are computed, not what they are.
nlohmann::json canonical_spec(const JobRun& run) {
  nlohmann::json spec = run.spec;
  spec["models"] = run.models;
  std::vector<std::string> digests;
  for (const std::string& m : run.models) digests.push_back(file_digest(m));
  spec["model_digests"] = digests;
  if (!run.judge.empty()) {
    spec["judge"] = run.judge;
    spec["judge_digest"] = file_digest(run.judge);
  }
  spec["regularizers"] = regularizers_to_json(run.job.reg);
  if (run.shards > 1) spec["shard"] = std::to_string(run.shard) + "/" + std::to_string(run.shards);
  // As written to disk (bytes that are not UTF-8 become U+FFFD), so that the journal's copy compares equal.
  return nlohmann::json::parse(json_text(spec));
}

}  // namespace

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
  const PartRange part = part_range(rows, run.shard, run.shards);
  const int H = primary.arch.input.h, W = primary.arch.input.w, D = primary.arch.input.size();

  // The output folder is checked before any backend is made, so that a bad --out is the one message printed; the
  // folders made for it are removed again if the job fails before its results are written (they are then empty).
  CreatedFolders made(ensure_output_dir(run.out));
  const OutputLock lock(run.out, command_line());
  if (lock.recovered_commit() && !run.quiet)
    std::fprintf(stderr, "nudge: finished committing the results of an earlier job in %s that was killed while committing\n",
                 run.out.c_str());
  if (lock.removed_temporaries() > 0 && !run.quiet)
    std::fprintf(stderr, "nudge: removed %d temporary file%s of an earlier, interrupted job in %s\n",
                 lock.removed_temporaries(), lock.removed_temporaries() == 1 ? "" : "s", run.out.c_str());
  JournalHeader header;
  header.job = canonical_spec(run);
  header.total_rows = rows;
  header.first_row = part.first;
  header.rows = part.end - part.first;
  header.part = run.shard;
  header.parts = run.shards;
  header.height = H;
  header.width = W;
  header.classes = K;
  header.steps = job.steps;
  header.target_dist = job.target_dist;
  header.judge = judge_model != nullptr;
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
  // Opened once the backends exist, so that a job refused by its backend leaves no journal behind.
  JobJournal journal(run.out, header, run.resume, run.quiet);
  if (journal.already_complete()) {
    made.keep();
    std::printf("%s already holds the complete results of this job; nothing to resume\n", run.out.c_str());
    return journal.complete_summary();
  }

  ResultStaging staging(run.out);
  OptimizeReport report(staging.folder(), header.rows, K, H, W, job.steps, job.target_dist, judge != nullptr);
  report.keep_all_images(images != nullptr || static_cast<bool>(run.extra_files));
  const long replayed = journal.replay(report);
  std::vector<Backend*> ensemble;
  for (size_t i = 1; i < backends.size(); ++i) ensemble.push_back(backends[i].get());
  Backend& backend = *backends.front();
  if (!run.quiet) {
    std::fprintf(stderr, "nudge: %ld rows x %zu entries, %s %s lr %g, %d steps, %zu model%s, on %s\n", rows,
                 (job.eps.empty() ? 1 : job.eps.size()) * job.restarts, to_string(job.step.optimizer),
                 to_string(job.step.loss), job.step.lr, job.steps, models.size(), models.size() > 1 ? "s" : "",
                 backend.name().c_str());
    if (run.shards > 1)
      std::fprintf(stderr, "nudge: shard %d/%d: rows %ld to %ld\n", run.shard, run.shards, part.first, part.end - 1);
  }
  // Said even with --quiet: a scheduler's log should show that a job continued rather than began.
  if (replayed > 0) std::fprintf(stderr, "nudge: resuming: %ld of %ld rows were in the journal\n", replayed, header.rows);
  JobSink sink(judge.get(), &report, &journal.writer(), D, K);
  EngineStats stats;
  try {
    stats = run_optimize(backend, primary, job, starts, sink, !run.quiet, ensemble, {part.first + replayed, part.end});
  } catch (const Interrupted& e) {
    // The journal holds every chunk the writer finished; say so beside (never over) the previous complete results.
    const long done = journal.writer().rows_written();
    nlohmann::json s = report.progress_summary();
    s["complete"] = false;
    s["job"] = header.job;
    s["rows_total"] = header.rows;
    s["resume"] = "run the same command with --resume";
    write_file_atomically(run.out + "/summary.incomplete.json", json_text(s, 2) + "\n");
    Interrupted stop(e.signal, e.what());
    stop.kept = std::to_string(done) + " of " + std::to_string(header.rows) + " rows are kept in " + run.out +
                "'s journal: run the same command with --resume to continue (" + run.out +
                " still holds the previous complete results, if any)";
    throw stop;
  }
  nlohmann::json s = report.finish(header.job, sink.image_steps() + journal.image_steps_replayed(), stats.entries_per_row);
  if (run.extra_files) run.extra_files(report.all_images(), [&](const std::string& name) { return staging.path(name); });
  if (run.shards > 1) journal.stage_copy(staging.path("rows.nudge"));
  nlohmann::json files = nlohmann::json::object();
  for (const auto& [name, bytes] : staging.staged_files()) files[name] = bytes;
  s["files"] = files;
  const double seconds = stats.seconds;
  const nlohmann::json run_info = {
      {"device", backend.name()},
      {"path", stats.path},
      {"chunks", stats.chunks},
      {"rows_computed", stats.rows},
      {"rows_from_journal", replayed},
      {"image_steps", stats.image_steps},
      {"wall_seconds", seconds},
      {"image_steps_per_s", seconds > 0 ? stats.image_steps / seconds : 0.0},
      {"command", command_line()}};
  write_file_atomically(staging.path("run.json"), json_text(run_info, 2) + "\n");
  write_file_atomically(staging.path("summary.json"), json_text(s, 2) + "\n");
  staging.commit();
  journal.remove();
  made.keep();
  if (images) *images = report.all_images();

  std::printf("%ld rows: success %.2f%% (%ld/%ld)", header.rows, 100.0 * s["success_rate"].get<double>(),
              s["successes"].get<long>(), header.rows);
  if (s.contains("success_rate_correct_before"))
    std::printf(", %.2f%% of the %ld the model had right", 100.0 * s["success_rate_correct_before"].get<double>(),
                s["correct_before"].get<long>());
  if (!s["median_steps_to_success"].is_null()) std::printf("; median %g steps", s["median_steps_to_success"].get<double>());
  if (s.contains("soft_within_0.01"))
    std::printf("; %.2f%% within 0.01 of the target distribution", 100.0 * s["soft_within_0.01"].get<double>());
  if (s.contains("judge_agreement")) std::printf("; judge agrees on %.2f%%", 100.0 * s["judge_agreement"].get<double>());
  std::printf("; %.0f image-steps/s, %.2fs on %s (%s path); results in %s\n", run_info["image_steps_per_s"].get<double>(),
              seconds, backend.name().c_str(), stats.path.c_str(), run.out.c_str());
  return s;
}

}  // namespace nudge::cli
