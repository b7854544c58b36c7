// The files an optimize job leaves in its output folder, each written to a temporary name and renamed when whole:
//   results.csv   one row per (start image, target): the reported iterate's probabilities p0..p9, success, distances
//   images.npy    float32 [rows, H, W], the reported iterates, NumPy's format
//   grid.png      contact sheet of up to 100 rows: start image, result, target, class and probability
//   summary.json  the job, success rates with their denominators, steps, speed, device (written last)
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
  // judge: an independent model, never used in the optimization, that scores each reported image afterwards
  // (agreement = the judge gives the row's target class p >= 0.5). row() runs on the engine's writer thread, so the
  // judge predicts concurrently with the optimizing backend: it must be a backend object of its own (on a GPU, its
  // own context and stream; its few batches of memory are outside the optimizer's chunk budget).
  OptimizeReport(const std::string& out_dir, long rows, int classes, int height, int width, int steps,
                 std::vector<float> target_dist = {}, Backend* judge = nullptr);
  void row(const RowResult& r) override;
  // The same for many rows: their CSV lines are formatted in parallel (OpenMP), then recorded in order.
  void rows(const std::vector<RowResult>& batch) override;
  // Writes grid.png and summary.json and renames everything into place. Returns the summary.
  nlohmann::json finish(const nlohmann::json& job_spec, const EngineStats& stats, const std::string& device);
  // Every reported image, kept only when asked (class-visualisation grids need them all).
  void keep_all_images(bool keep) { keep_all_ = keep; }
  const std::vector<float>& all_images() const { return all_images_; }

 private:
  // The row's results.csv line without the judge's columns (thread-safe); within_band: soft rows within kBand.
  std::string format_line(const RowResult& r, bool* within_band) const;
  // Everything else a row does, in row order: the files, the counts, the grid.
  void record(const RowResult& r, std::string line, bool within_band);
  // InputError when a row's image or probabilities are not finite: no NaN result is written as a success.
  void check_finite(const RowResult& r) const;

  std::string dir_;
  int classes_, height_, width_, steps_;
  std::vector<float> target_dist_;
  long within_band_ = 0;  // soft rows whose every probability is within kBand of the target
  Backend* judge_ = nullptr;
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
  struct PendingRow {
    std::string line;  // the CSV line so far, without the judge's columns
    std::vector<float> image;
    RowTarget target;
  };
  void flush_judged();
  std::vector<PendingRow> pending_;
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
