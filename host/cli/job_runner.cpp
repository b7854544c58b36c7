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
#include "interrupt.h"
#include "job_journal.h"
#include "job_sink.h"
#include "job_setup.h"
#include "json_text.h"
#include "rank_world.h"
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
  cmd.add_option("--pca", reg.pca_path,
                 "optimize the coefficients of this principal-component basis (nudge pca) instead of the pixels");
  cmd.add_option("--pca-prior", reg.pca_prior, "weight of the basis' Gaussian log-density on the coefficients")
      ->capture_default_str();
  cmd.add_option("--pca-anchor", reg.pca_anchor,
                 "weight of a pull toward each image's own start coefficients")
      ->capture_default_str();
}

RegularizerConfig given_regularizers(const CLI::App& cmd, const RegularizerConfig& parsed, RegularizerConfig base) {
  auto take = [&](const char* flag, auto member) {
    if (cmd.count(flag) > 0) base.*member = parsed.*member;
  };
  take("--tv", &RegularizerConfig::tv);
  take("--tv-isotropic", &RegularizerConfig::tv_isotropic);
  take("--l2", &RegularizerConfig::l2);
  take("--l1", &RegularizerConfig::l1);
  take("--prior-decay", &RegularizerConfig::prior_decay);
  take("--l2-center", &RegularizerConfig::l2_center);
  take("--blur-every", &RegularizerConfig::blur_every);
  take("--blur-sigma", &RegularizerConfig::blur_sigma);
  take("--blur-decay", &RegularizerConfig::blur_decay);
  take("--jitter", &RegularizerConfig::jitter);
  take("--sigmoid", &RegularizerConfig::sigmoid);
  take("--settle", &RegularizerConfig::settle_steps);
  take("--pca", &RegularizerConfig::pca_path);
  take("--pca-prior", &RegularizerConfig::pca_prior);
  take("--pca-anchor", &RegularizerConfig::pca_anchor);
  return base;
}

void load_pca_prior(OptimizeJob& job) {
  job.reg.pca.reset();
  if (!job.reg.pca_path.empty()) job.reg.pca = std::make_shared<PcaBasis>(read_pca_basis(job.reg.pca_path));
}

InitKind parse_init(const std::string& s, std::string* dir) {
  if (s == "noise") return InitKind::Noise;
  if (s == "gauss") return InitKind::Gauss;
  if (s == "gray") return InitKind::Gray;
  if (s == "pca") return InitKind::Pca;
  if (s == "test") return InitKind::Test;
  if (s == "train") return InitKind::Train;
  *dir = s;
  return InitKind::Images;
}

namespace {
nlohmann::json pixel_priors_to_json(const RegularizerConfig& r) {
  return {{"tv", r.tv},           {"tv_isotropic", r.tv_isotropic}, {"l2", r.l2},
          {"l2_center", r.l2_center}, {"blur_every", r.blur_every}, {"blur_sigma", r.blur_sigma},
          {"blur_decay", r.blur_decay}, {"jitter", r.jitter},       {"sigmoid", r.sigmoid},
          {"settle_steps", r.settle_steps}, {"l1", r.l1}, {"prior_decay", r.prior_decay}};
}
}  // namespace

nlohmann::json regularizers_to_json(const RegularizerConfig& r) {
  nlohmann::json j = pixel_priors_to_json(r);
  if (!r.pca_path.empty()) {
    j["pca"] = r.pca_path;
    j["pca_digest"] = file_digest(r.pca_path);
    j["pca_components"] = r.pca ? r.pca->components : 0;
    j["pca_prior"] = r.pca_prior;
    j["pca_anchor"] = r.pca_anchor;
  }
  return j;
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

nlohmann::json run_job(const JobRun& run, std::vector<float>* images) {
  if (dist::world().size > 1) return run_job_on_ranks(run, images);
  const OptimizeJob& job = run.job;
  LoadedJob j;
  load_job_inputs(run, j);
  const PartRange part = part_range(j.rows, run.shard, run.shards);

  // The output folder is checked before any backend is made, so that a bad --out is the one message printed; the
  // folders made for it are removed again if the job fails before its results are written (they are then empty).
  CreatedFolders made(ensure_output_dir(run.out));
  const OutputLock lock(run.out, command_line());
  report_lock_cleanup(lock, run.out, run.quiet);
  const JournalHeader header = journal_header(run, j, canonical_spec(run), run.shard, run.shards);
  make_job_backends(run, j);
  // Opened once the backends exist, so that a job refused by its backend leaves no journal behind.
  JobJournal journal(run.out, header, run.resume, run.quiet);
  if (journal.already_complete()) {
    made.keep();
    std::printf("%s already holds the complete results of this job; nothing to resume\n", run.out.c_str());
    return journal.complete_summary();
  }

  ResultStaging staging(run.out);
  OptimizeReport report(staging.folder(), header.rows, j.K, j.H, j.W, job.steps, job.target_dist, j.judge != nullptr);
  report.keep_all_images(images != nullptr || static_cast<bool>(run.extra_files));
  const long replayed = journal.replay(report);
  Backend& backend = *j.backends.front();
  if (!run.quiet) {
    print_job_line(run, j, backend.name());
    if (run.shards > 1)
      std::fprintf(stderr, "nudge: shard %d/%d: rows %ld to %ld\n", run.shard, run.shards, part.first, part.end - 1);
  }
  // Said even with --quiet: a scheduler's log should show that a job continued rather than began.
  if (replayed > 0) std::fprintf(stderr, "nudge: resuming: %ld of %ld rows were in the journal\n", replayed, header.rows);
  JobSink sink(j.judge.get(), &report, &journal.writer(), j.D, j.K, j.judge_classes());
  EngineStats stats;
  try {
    stats = run_optimize(backend, j.models.front(), job, *j.starts, sink, !run.quiet, j.ensemble(),
                         {part.first + replayed, part.end});
  } catch (const Interrupted& e) {
    // The journal holds every chunk the writer finished; say so beside (never over) the previous complete results.
    const long done = journal.writer().rows_written();
    nlohmann::json s = report.progress_summary();
    write_incomplete_summary(run.out, s, header, done);
    throw interrupted_with_journal(e, run.out, done, header.rows);
  }
  nlohmann::json s = report.finish(header.job, sink.image_steps() + journal.image_steps_replayed(), stats.entries_per_row);
  if (run.extra_files) run.extra_files(report.all_images(), [&](const std::string& name) { return staging.path(name); });
  if (run.shards > 1) journal.stage_copy(staging.path("rows.nudge"));
  const nlohmann::json run_info = {
      {"device", backend.name()},
      {"path", stats.path},
      {"chunks", stats.chunks},
      {"rows_computed", stats.rows},
      {"rows_from_journal", replayed},
      {"image_steps", stats.image_steps},
      {"wall_seconds", stats.seconds},
      {"image_steps_per_s", stats.seconds > 0 ? stats.image_steps / stats.seconds : 0.0},
      {"command", command_line()}};
  commit_results(staging, s, run_info);
  journal.remove();
  made.keep();
  if (images) *images = report.all_images();
  print_summary_line(s, header.rows, run_info["image_steps_per_s"].get<double>(), stats.seconds, backend.name(),
                     stats.path, run.out);
  return s;
}

void report_lock_cleanup(const OutputLock& lock, const std::string& out, bool quiet) {
  if (quiet) return;
  if (lock.recovered_commit())
    std::fprintf(stderr, "nudge: finished committing the results of an earlier job in %s that was killed while committing\n",
                 out.c_str());
  if (lock.removed_temporaries() > 0)
    std::fprintf(stderr, "nudge: removed %d temporary file%s of an earlier, interrupted job in %s\n",
                 lock.removed_temporaries(), lock.removed_temporaries() == 1 ? "" : "s", out.c_str());
}

void write_incomplete_summary(const std::string& out, nlohmann::json s, const JournalHeader& header, long rows_kept) {
  s["complete"] = false;
  s["job"] = header.job;
  s["rows_total"] = header.rows;
  s["rows_kept"] = rows_kept;
  s["resume"] = "run the same command with --resume";
  write_file_atomically(out + "/summary.incomplete.json", json_text(s, 2) + "\n");
}

Interrupted interrupted_with_journal(const Interrupted& e, const std::string& out, long done, long rows) {
  Interrupted stop(e.signal, e.what());
  stop.kept = std::to_string(done) + " of " + std::to_string(rows) + " rows are kept in " + out +
              "'s journal: run the same command with --resume to continue (" + out +
              " still holds the previous complete results, if any)";
  return stop;
}

void commit_results(ResultStaging& staging, nlohmann::json& summary, const nlohmann::json& run_info) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& [name, bytes] : staging.staged_files()) files[name] = bytes;
  summary["files"] = files;
  write_file_atomically(staging.path("run.json"), json_text(run_info, 2) + "\n");
  write_file_atomically(staging.path("summary.json"), json_text(summary, 2) + "\n");
  staging.commit();
}

}  // namespace nudge::cli
