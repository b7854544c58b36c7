#include "job_setup.h"

#include <algorithm>

#include <cstdio>
#include <filesystem>

#include "atomic_file.h"
#include "errors.h"
#include "model_file.h"
#include "fnv1a.h"
#include "job_journal.h"
#include "json_text.h"
#include "make_backend.h"
#include "model_loading.h"

namespace nudge::cli {

std::string file_digest(const std::string& path) {
  const std::string bytes = read_file(path);
  char text[32];
  std::snprintf(text, sizeof text, "fnv1a64:%016llx", static_cast<unsigned long long>(fnv1a64(bytes.data(), bytes.size())));
  return text;
}

std::vector<Backend*> LoadedJob::ensemble() const {
  std::vector<Backend*> out;
  for (size_t i = 1; i < backends.size(); ++i) out.push_back(backends[i].get());
  return out;
}

void load_job_inputs(const JobRun& run, LoadedJob& j) {
  const OptimizeJob& job = run.job;
  if (run.models.empty()) throw InputError("no --model given");
  for (const std::string& path : run.models) j.models.push_back(load_inference_model(path));
  const Model& primary = j.models.front();
  j.K = primary.arch.num_classes();
  for (size_t i = 1; i < j.models.size(); ++i)
    if (!(j.models[i].arch.input == primary.arch.input) || j.models[i].arch.num_classes() != j.K)
      throw InputError(run.models[i] + " does not take the same inputs and classes as " + run.models[0]);
  if (!run.judge.empty()) {
    j.judge_model = std::make_unique<Model>(load_inference_model(run.judge));
    // The judge may know fewer classes than the model, its first ones under the same names (a 10-class judge of an
    // open-set model's digits); rows toward the others are not judged.
    const std::vector<std::string> judge_names = class_names(*j.judge_model), names = class_names(primary);
    const int JK = j.judge_classes();
    if (!(j.judge_model->arch.input == primary.arch.input) || JK > j.K ||
        !std::equal(judge_names.begin(), judge_names.end(), names.begin()))
      throw InputError("judge " + run.judge + " does not take the same inputs and classes as " + run.models[0]);
    // The same file under two spellings (./a, a, a symlink) is the same model.
    for (const std::string& m : run.models) {
      std::error_code ec;
      if (m == run.judge || std::filesystem::equivalent(m, run.judge, ec))
        throw InputError("the judge " + run.judge + " is also an optimized-against model (" + m + ")");
    }
  }
  validate_job(job, j.K);
  if (job.reg.pca && job.reg.pca->pixels != primary.arch.input.size())
    throw InputError("--pca " + job.reg.pca_path + " describes images of " + std::to_string(job.reg.pca->pixels) +
                     " pixels; " + run.models[0] + " takes " + std::to_string(primary.arch.input.size()));
  if (job.init == InitKind::Test || job.init == InitKind::Train) {
    j.data = std::make_unique<Dataset>(load_dataset(run.data, job.init == InitKind::Test ? "test" : "train"));
    check_model_fits(primary, run.models[0], j.data->rows, j.data->cols, 10);
  }
  j.starts = std::make_unique<StartImages>(job, j.data.get(), primary.arch.input.w, primary.arch.input.h);
  j.rows = j.starts->count() * static_cast<long>(targets_for(job, 0, 0, j.K).size());
  j.H = primary.arch.input.h;
  j.W = primary.arch.input.w;
  j.D = primary.arch.input.size();
}

void make_job_backends(const JobRun& run, LoadedJob& j) {
  for (const Model& m : j.models) {
    j.backends.push_back(make_backend(run.device));
    j.backends.back()->load_model(m);
    const std::string refusal = j.backends.back()->path_refusal(run.job.step.path);
    if (!refusal.empty()) throw InputError(refusal);
  }
  if (run.job.step.path == OptimizePath::Fused && (run.job.reg.any() || j.models.size() > 1))
    throw InputError("--path fused runs plain jobs only: priors and ensembles use the host-regularised path");
  if (j.judge_model) {
    j.judge = make_backend(run.device);
    j.judge->load_model(*j.judge_model);
  }
}

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

JournalHeader journal_header(const JobRun& run, const LoadedJob& j, const nlohmann::json& spec, int part, int parts) {
  const PartRange range = part_range(j.rows, part, parts);
  JournalHeader h;
  h.job = spec;
  h.total_rows = j.rows;
  h.first_row = range.first;
  h.rows = range.end - range.first;
  h.part = part;
  h.parts = parts;
  h.height = j.H;
  h.width = j.W;
  h.classes = j.K;
  h.steps = run.job.steps;
  h.target_dist = run.job.target_dist;
  h.judge = j.judge_model != nullptr;
  return h;
}

void print_job_line(const JobRun& run, const LoadedJob& j, const std::string& where) {
  const OptimizeJob& job = run.job;
  std::fprintf(stderr, "nudge: %ld rows x %zu entries, %s %s lr %g, %d steps, %zu model%s, on %s\n", j.rows,
               (job.eps.empty() ? 1 : job.eps.size()) * job.restarts, to_string(job.step.optimizer),
               to_string(job.step.loss), job.step.lr, job.steps, j.models.size(), j.models.size() > 1 ? "s" : "",
               where.c_str());
}

void print_summary_line(const nlohmann::json& s, long rows, double image_steps_per_s, double seconds,
                        const std::string& device, const std::string& path, const std::string& out) {
  std::printf("%ld rows: success %.2f%% (%ld/%ld)", rows, 100.0 * s["success_rate"].get<double>(),
              s["successes"].get<long>(), rows);
  if (s.contains("success_rate_correct_before"))
    std::printf(", %.2f%% of the %ld the model had right", 100.0 * s["success_rate_correct_before"].get<double>(),
                s["correct_before"].get<long>());
  if (!s["median_steps_to_success"].is_null()) std::printf("; median %g steps", s["median_steps_to_success"].get<double>());
  if (s.contains("soft_within_0.01"))
    std::printf("; %.2f%% within 0.01 of the target distribution", 100.0 * s["soft_within_0.01"].get<double>());
  if (s.contains("judge_agreement")) std::printf("; judge agrees on %.2f%%", 100.0 * s["judge_agreement"].get<double>());
  std::printf("; %.0f image-steps/s, %.2fs on %s (%s path); results in %s\n", image_steps_per_s, seconds, device.c_str(),
              path.c_str(), out.c_str());
}

}  // namespace nudge::cli
