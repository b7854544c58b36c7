// An optimize job across the ranks of an MPI job (mpirun -np N nudge optimize ...). Rank r computes part r of N of
// the rows (job_journal.h's part_range, on its own GPU or the CPU) and sends them to rank 0, chunk by chunk, as
// encoded journal blocks; rank 0 keeps every part's journal in the output folder (the only rank that touches it, so
// no shared file system is needed), computes part 0 itself, and when every part is complete reads the parts back in
// order into one report: the folder is byte-identical to a single process's. --resume continues every part from the
// journal. A rank that fails ends the whole job with that rank's message; the journal stays for --resume and the
// folder keeps its previous complete results.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>

#include "atomic_file.h"
#include "commands.h"
#include "errors.h"
#include "exit_status.h"
#include "interrupt.h"
#include "job_journal.h"
#include "job_runner.h"
#include "job_setup.h"
#include "job_sink.h"
#include "json_text.h"
#include "optimize_report.h"
#include "output_lock.h"
#include "rank_world.h"
#include "rank_collector.h"
#include "result_commit.h"

namespace nudge::cli {

namespace {

// A non-root rank's journal: each block goes to the root, which appends it to this rank's part.
class RootBoundBlocks : public RowBlockSink {
 public:
  explicit RootBoundBlocks(long rows_before) : rows_(rows_before) {}
  void append(const std::vector<RowResult>& rows, long image_steps, int D, int K) override {
    if (rows.empty()) return;
    send_block_to_root(encode_journal_block(rows, image_steps, D, K, rows_));
    rows_ += static_cast<long>(rows.size());
  }

 private:
  long rows_;
};

// What a rank reports when its part is done, for run.json.
nlohmann::json rank_stats(int rank, const std::string& device, const EngineStats& s, long from_journal) {
  return {{"rank", rank},           {"device", device},           {"path", s.path},
          {"rows_computed", s.rows}, {"rows_from_journal", from_journal}, {"chunks", s.chunks},
          {"image_steps", s.image_steps}, {"wall_seconds", s.seconds}, {"entries_per_row", s.entries_per_row}};
}

// The root's note on a failed job: summary.incomplete.json and the message, naming the rank and what was kept.
void say_failure(const JobRun& run, JobJournal& journal, const std::vector<JournalHeader>& headers, int rank,
                 const ExitStatus& why) {
  const long kept = journal.rows_kept();
  try {
    nlohmann::json s;
    s["ranks"] = static_cast<int>(headers.size());
    s["failed_rank"] = rank;
    s["failure"] = why.message;
    JournalHeader whole = headers.front();
    whole.rows = whole.total_rows;
    write_incomplete_summary(run.out, s, whole, kept);
  } catch (...) {
    // The message below matters more than the note.
  }
  const std::string who = rank == 0 ? "" : "rank " + std::to_string(rank) + " of " + std::to_string(headers.size()) + ": ";
  std::fprintf(stderr, "nudge: %s%s; %ld of %ld rows are kept in %s's journal: run the same command with --resume to "
               "continue\n", who.c_str(), why.message.c_str(), kept, headers.front().total_rows, run.out.c_str());
}

nlohmann::json run_root(const JobRun& run, LoadedJob& j, JobJournal& journal, const std::vector<JournalHeader>& headers,
                        CreatedFolders& made, const std::vector<long>& done,
                        std::vector<float>* images) {
  const int n = static_cast<int>(headers.size());
  RankCollector root(
      n, [&](int rank, const std::string& block) { journal.writer(rank).append_block(block); },
      [&](int rank, const ExitStatus& why) { say_failure(run, journal, headers, rank, why); });
  long replayed = 0;
  for (long d : done) replayed += d;
  if (!run.quiet) {
    print_job_line(run, j, std::to_string(n) + " MPI ranks (rank 0: " + j.backends.front()->name() + ")");
    std::fprintf(stderr, "nudge: rank 0 computes rows 0 to %ld and writes %s; the progress bar is rank 0's\n",
                 headers[0].rows - 1, run.out.c_str());
  }
  if (replayed > 0)
    std::fprintf(stderr, "nudge: resuming: %ld of %ld rows were in the journal\n", replayed, headers[0].total_rows);
  const auto started = std::chrono::steady_clock::now();
  root.start();
  try {
    EngineStats stats;
    const PartRange part{headers[0].first_row, headers[0].first_row + headers[0].rows};
    JobSink sink(j.judge.get(), nullptr, &journal.writer(0), j.D, j.K, j.judge_classes());
    // Also when the part is complete: the engine's stats (entries per row) go into the summary.
    stats = run_optimize(*j.backends.front(), j.models.front(), run.job, *j.starts, sink, !run.quiet, j.ensemble(),
                           {part.first + done[0], part.end});
    root.set_own_stats(rank_stats(0, j.backends.front()->name(), stats, done[0]));
  } catch (const Interrupted& e) {
    root.fail(0, {128 + e.signal, e.what()});  // fail() says what the journal kept
  } catch (...) {
    root.fail(0, exit_status_of(std::current_exception()));
  }
  root.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  nlohmann::json s, run_info;
  std::string path;
  try {
    ResultStaging staging(run.out);  // made only now: an aborted job leaves no staging folder
    OptimizeReport report(staging.folder(), headers[0].total_rows, j.K, j.H, j.W, run.job.steps, run.job.target_dist,
                          j.judge != nullptr);
    report.keep_all_images(images != nullptr || static_cast<bool>(run.extra_files));
    const long image_steps = journal.replay_all(report);
    int entries_per_row = 1;
    long computed_steps = 0;
    for (const nlohmann::json& r : root.stats()) {
      entries_per_row = std::max(entries_per_row, r.value("entries_per_row", 1));
      computed_steps += r.value("image_steps", 0L);
      if (path.empty()) path = r.value("path", std::string());
    }
    s = report.finish(headers[0].job, image_steps, entries_per_row);
    if (run.extra_files) run.extra_files(report.all_images(), [&](const std::string& name) { return staging.path(name); });
    run_info = {{"ranks", root.stats()},
                {"rows_from_journal", replayed},
                {"image_steps", computed_steps},
                {"wall_seconds", seconds},
                {"image_steps_per_s", seconds > 0 ? computed_steps / seconds : 0.0},
                {"command", command_line()}};
    commit_results(staging, s, run_info);
    if (images) *images = report.all_images();
  } catch (...) {
    root.fail(0, exit_status_of(std::current_exception()));
  }
  // Committed: from here on a failure is not the job's (the folder holds its complete results).
  release_ranks();
  made.keep();
  journal.remove();
  print_summary_line(s, headers[0].total_rows, run_info["image_steps_per_s"].get<double>(), seconds,
                     std::to_string(n) + " MPI ranks", path.empty() ? "no" : path, run.out);
  return s;
}

void run_other_rank(const JobRun& run, LoadedJob& j, const PartRange& part, long done) {
  const int rank = dist::world().rank;
  try {
    RootBoundBlocks blocks(done);
    JobSink sink(j.judge.get(), nullptr, &blocks, j.D, j.K, j.judge_classes());
    EngineStats stats;
    stats = run_optimize(*j.backends.front(), j.models.front(), run.job, *j.starts, sink, false, j.ensemble(),
                           {part.first + done, part.end});
    send_done_to_root(rank_stats(rank, j.backends.front()->name(), stats, done));
  } catch (...) {
    send_failure_to_root(std::current_exception());
  }
  wait_for_root_commit();
}

}  // namespace

nlohmann::json run_job_on_ranks(const JobRun& run, std::vector<float>* images) {
  const dist::World& w = dist::world();
  const bool root = w.rank == 0;
  if (run.shards > 1)
    throw ExitWith(2, root ? "--shard and mpirun -np " + std::to_string(w.size) + " do not mix: the ranks are the shards" : "");
  LoadedJob j;
  std::optional<CreatedFolders> made;
  std::optional<OutputLock> lock;
  std::vector<JournalHeader> headers;
  std::unique_ptr<JobJournal> journal;
  std::vector<long> done(w.size, 0);
  // Setting up: every rank loads and checks the job and makes its backends; the root also takes the output folder
  // and opens the journal. The first failure, in rank order, is every rank's.
  dist::Outcome mine;
  std::string inputs;
  try {
    load_job_inputs(run, j);
    for (const std::string& m : run.models) inputs += m + "=" + file_digest(m) + "\n";
    if (!run.judge.empty()) inputs += run.judge + "=" + file_digest(run.judge) + "\n";
    if (root) {
      made.emplace(ensure_output_dir(run.out));
      lock.emplace(run.out, command_line());
      report_lock_cleanup(*lock, run.out, run.quiet);
      const nlohmann::json spec = canonical_spec(run);
      for (int r = 0; r < w.size; ++r) headers.push_back(journal_header(run, j, spec, r, w.size));
    }
    make_job_backends(run, j);
    if (root) {
      journal = std::make_unique<JobJournal>(run.out, headers, run.resume, run.quiet);
      if (!journal->already_complete()) done = journal->open_parts();
    }
  } catch (...) {
    const ExitStatus e = exit_status_of(std::current_exception());
    mine.code = e.code;
    mine.message = e.message;
  }
  const dist::Outcome first = dist::first_failure(mine);
  if (first.code != 0)
    throw ExitWith(first.code, !root ? "" : first.rank == 0 ? first.message
                                       : "rank " + std::to_string(first.rank) + " of " + std::to_string(w.size) + ": " + first.message);
  check_same_inputs_as_root(inputs);
  // A folder that already holds this job's results: every rank learns it from a done count of -1.
  const bool complete = root && journal->already_complete();
  std::vector<long> plan = done;
  if (complete) plan.assign(w.size, -1);
  const long my_done = dist::scatter_from_root(plan);
  // A rank other than the root ends here, through main, saying nothing: the root speaks for the job.
  if (my_done < 0) {
    if (!root) throw ExitWith(0, "");
    made->keep();
    std::printf("%s already holds the complete results of this job; nothing to resume\n", run.out.c_str());
    return journal->complete_summary();
  }
  if (!root) {
    run_other_rank(run, j, part_range(j.rows, w.rank, w.size), my_done);
    throw ExitWith(0, "");
  }
  return run_root(run, j, *journal, headers, *made, done, images);
}

}  // namespace nudge::cli
