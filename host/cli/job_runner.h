// Running an optimize job from the command line: loads the models (primary, ensemble, judge), the start images and
// the backend, runs the engine into an OptimizeReport, prints a one-line summary. Shared by optimize and visualize.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "interrupt.h"
#include "optimize_job.h"
#include "output_lock.h"
#include "result_commit.h"
#include "row_journal.h"

namespace nudge::cli {

struct JobRun {
  OptimizeJob job;
  std::vector<std::string> models;  // the first is the primary model; the others form the ensemble
  std::string judge;                // optional: scores the results, never used in the optimization
  std::string data, device, out;
  nlohmann::json spec;              // the job as the user stated it, for summary.json
  bool quiet = false;
  bool resume = false;              // continue the folder's journal of this job (job_journal.h)
  int shard = 0, shards = 1;        // --shard K/N: this run computes part K of N of the rows
  // Called with every reported image before the results are committed, to stage further files of the set
  // (visualize's classes.png) through `stage(name)`, which gives the path to write file `name` to.
  std::function<void(const std::vector<float>& images, const std::function<std::string(const std::string&)>& stage)>
      extra_files;
};

// Runs the job; returns the summary. When `images` is non-null it receives every reported image, row-major.
nlohmann::json run_job(const JobRun& run, std::vector<float>* images);

// The same job across the ranks of an MPI job (rank_job.cpp): each rank computes its part, the root writes the folder.
nlohmann::json run_job_on_ranks(const JobRun& run, std::vector<float>* images);

// Pieces run_job and run_job_on_ranks share. The notes of an OutputLock that tidied the folder (stderr).
void report_lock_cleanup(const OutputLock& lock, const std::string& out, bool quiet);
// summary.incomplete.json of an interrupted job: `s` (the counts so far) marked incomplete, with the job and the rows kept.
void write_incomplete_summary(const std::string& out, nlohmann::json s, const JournalHeader& header, long rows_kept);
// The Interrupted to rethrow, its `kept` saying where the rows are and how to continue.
Interrupted interrupted_with_journal(const Interrupted& e, const std::string& out, long done, long rows);
// Adds `files` to the summary, stages run.json and summary.json (last) and commits the set.
void commit_results(ResultStaging& staging, nlohmann::json& summary, const nlohmann::json& run_info);

// --shard K/N as (K, N); InputError naming the flag when malformed.
void parse_shard(const std::string& text, int* shard, int* shards);

// The regulariser flags, shared by optimize and visualize.
void add_regularizer_flags(CLI::App& cmd, RegularizerConfig& reg);
// `base` (a preset) with every regularizer flag the user gave on cmd taken from `parsed`, the values
// add_regularizer_flags wrote: for a command whose preset another flag picks.
RegularizerConfig given_regularizers(const CLI::App& cmd, const RegularizerConfig& parsed, RegularizerConfig base);
// Reads the basis --pca names into job.reg.pca (InputError naming the file when it is not a valid basis).
void load_pca_prior(OptimizeJob& job);
// --init's text: noise | gauss | gray | pca | test | train, or else a folder of images (its name into *dir).
InitKind parse_init(const std::string& text, std::string* dir);
nlohmann::json regularizers_to_json(const RegularizerConfig& reg);

}  // namespace nudge::cli
