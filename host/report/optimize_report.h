// The files an optimize job leaves in its output folder, written into the job's staging folder and committed together
// (result_commit.h):
//   results.csv   one row per (start image, target): the reported iterate's probabilities p0..p9, success, distances
//   images.npy    float32 [rows, H, W], the reported iterates, NumPy's format
//   grid.png      contact sheet of up to 100 rows: start image, result, target, class and probability
//   summary.json  the job, success rates with their denominators, steps (written by the caller, last)
// Everything here is a pure function of the rows in order, so a resumed, sharded or MPI job, whose rows partly come
// from a journal (row_journal.h), writes the same bytes as a single uninterrupted run. Timing, device and chunking,
// which differ between such runs, go to run.json (job_runner.cpp).
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "atomic_file.h"
#include "image_io.h"
#include "optimize_engine.h"

namespace nudge {

class OptimizeReport : public RowSink {
 public:
  // Creates the folder if needed and opens the streamed files; InputError if it cannot be written.
  // target_dist: the job's soft target (empty for one-hot jobs); rows then also report their distance to it.
  // judged: the rows carry an independent judge's verdict (RowResult::judge_class; agreement = the judge gives the
  // row's target class p >= 0.5), written as two more columns.
  OptimizeReport(const std::string& out_dir, long rows, int classes, int height, int width, int steps,
                 std::vector<float> target_dist = {}, bool judged = false);
  void row(const RowResult& r) override;
  // The same for many rows: their CSV lines are formatted in parallel (OpenMP), then recorded in order.
  void rows(const std::vector<RowResult>& batch, long image_steps) override;
  // Writes grid.png and closes results.csv and images.npy (in the folder given to the constructor). Returns the
  // summary for summary.json, which the caller writes last. image_steps: the updates of the whole job.
  nlohmann::json finish(const nlohmann::json& job_spec, long image_steps, int entries_per_row);
  // The counts so far, for the summary of an interrupted job (summary.incomplete.json).
  nlohmann::json progress_summary() const;
  // Every reported image, kept only when asked (class-visualisation grids need them all).
  void keep_all_images(bool keep) { keep_all_ = keep; }
  const std::vector<float>& all_images() const { return all_images_; }

 private:
  // The row's results.csv line (thread-safe); within_band: soft rows within kBand.
  std::string format_line(const RowResult& r, bool* within_band) const;
  // Everything else a row does, in row order: the files, the counts, the grid.
  void record(const RowResult& r, std::string line, bool within_band);
  // InputError when a row's image or probabilities are not finite: no NaN result is written as a success.
  void check_finite(const RowResult& r) const;

  std::string dir_;
  int classes_, height_, width_, steps_;
  std::vector<float> target_dist_;
  long within_band_ = 0;  // soft rows whose every probability is within kBand of the target
  bool judged_rows_ = false;
  long judged_ = 0, judge_agree_ = 0;
  std::unique_ptr<AtomicFile> csv_;
  std::unique_ptr<NpyStreamWriter> npy_;
  long rows_ = 0, successes_ = 0, labelled_ = 0, correct_before_ = 0, correct_before_successes_ = 0;
  std::vector<long> success_at_step_;  // rows first succeeding after exactly s updates (grown as rows arrive)
  int most_updates_ = 0;               // the most updates any row took (capped at steps_)
  std::vector<int> success_steps_;
  struct GridItem {
    std::vector<float> start, image;
    std::string caption;
  };
  bool keep_all_ = false;
  std::vector<float> all_images_;
  std::vector<GridItem> grid_;
};

// Creates `dir` (and parents) if missing; InputError naming it if that fails or it is not writable. Returns the
// folders it created, outermost first.
std::vector<std::string> ensure_output_dir(const std::string& dir);

// Removes the folders ensure_output_dir made (innermost first, and only while empty) unless keep() was called: a job
// that fails early leaves no empty output folder behind.
class CreatedFolders {
 public:
  explicit CreatedFolders(std::vector<std::string> folders) : folders_(std::move(folders)) {}
  ~CreatedFolders();
  CreatedFolders(const CreatedFolders&) = delete;
  CreatedFolders& operator=(const CreatedFolders&) = delete;
  void keep() { folders_.clear(); }

 private:
  std::vector<std::string> folders_;
};

// A results.csv field: quoted as RFC 4180 says when it holds a comma, a quote, CR or LF (quotes doubled).
std::string csv_field(const std::string& text);

}  // namespace nudge
