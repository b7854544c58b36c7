// The parts of running an optimize job that a single process and the ranks of an MPI job share: loading and checking
// its inputs, making its backends, the job spec that a resume or merge must match, its journal header, run.json and
// the closing summary line (job_runner.cpp runs a job in one process, rank_job.cpp across MPI ranks).
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "dataset.h"
#include "job_runner.h"
#include "model.h"
#include "optimize_engine.h"
#include "row_journal.h"
#include "start_images.h"

namespace nudge::cli {

// A job's inputs and backends. Not movable: the start images and the backends point into it.
struct LoadedJob {
  std::vector<Model> models;  // the first is the primary model
  std::unique_ptr<Model> judge_model;
  std::unique_ptr<Dataset> data;
  std::unique_ptr<StartImages> starts;
  long rows = 0;
  int K = 0, H = 0, W = 0, D = 0;
  std::vector<std::unique_ptr<Backend>> backends;  // one per model
  std::unique_ptr<Backend> judge;

  LoadedJob() = default;
  LoadedJob(const LoadedJob&) = delete;
  LoadedJob& operator=(const LoadedJob&) = delete;
  std::vector<Backend*> ensemble() const;
  // The judge's classes (it may have fewer than the model), 0 without a judge.
  int judge_classes() const { return judge_model ? judge_model->arch.num_classes() : 0; }
};

// Loads and checks the models, the judge, the job and its start images (InputError naming what is wrong). Touches
// neither the output folder nor a device.
void load_job_inputs(const JobRun& run, LoadedJob& job);
// Makes a backend per model and the judge's (InputError when the backend refuses the job's path).
void make_job_backends(const JobRun& run, LoadedJob& job);

// "fnv1a64:0123456789abcdef" of a model file: a resume must run against the very weights its journal was made with.
std::string file_digest(const std::string& path);

// The job as summary.json states it and as a resume must match it: what the user asked for, the models (by path and
// content) and, for --shard, the shard. Not the device, --chunk, --quiet or the MPI ranks, which change how the rows
// are computed, not what they are.
nlohmann::json canonical_spec(const JobRun& run);
// The journal header of part `part` of `parts` of the job.
JournalHeader journal_header(const JobRun& run, const LoadedJob& job, const nlohmann::json& spec, int part, int parts);

// "nudge: 1000 rows x 1 entries, adam ce lr 0.1, 20 steps, 1 model, on cpu" (stderr).
void print_job_line(const JobRun& run, const LoadedJob& job, const std::string& where);
// The line a finished job prints (stdout).
void print_summary_line(const nlohmann::json& summary, long rows, double image_steps_per_s, double seconds,
                        const std::string& device, const std::string& path, const std::string& out);

}  // namespace nudge::cli
