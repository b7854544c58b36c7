#include "optimize_report.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "contact_sheet.h"
#include "errors.h"
#include "parallel_errors.h"
#include "output_lock.h"
#include "json_text.h"

namespace nudge {

namespace {
constexpr size_t kGridCells = 100;

// Appends ",%.6g" of v. std::to_chars with general format and precision 6 is specified to give what printf's %.6g
// gives in the C locale, at a fraction of the cost: printf was most of a row's formatting time, and rows are written
// as fast as a GPU makes them.
void append_g6(std::string& s, double v) {
  char buf[40];
  buf[0] = ',';
  const std::to_chars_result r = std::to_chars(buf + 1, buf + sizeof buf, v, std::chars_format::general, 6);
  s.append(buf, r.ptr);
}
// The band a soft target is judged by in summaries: every class's probability within 0.01 of its target.
constexpr double kBand = 0.01;
}

std::vector<std::string> ensure_output_dir(const std::string& dir) {
  if (dir.empty()) throw InputError("--out: an output folder is required");
  std::vector<std::string> made;
  std::string partial;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      partial = dir.substr(0, i);
      if (partial.empty()) continue;
      if (::mkdir(partial.c_str(), 0777) == 0) {
        made.push_back(partial);
      } else if (errno != EEXIST) {
        const std::string why = std::strerror(errno);
        CreatedFolders cleanup(made);
        throw InputError("cannot create output folder " + partial + ": " + why);
      }
    }
  }
  struct stat st;
  CreatedFolders cleanup(made);
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw InputError("output path " + dir + " is not a folder");
  if (::access(dir.c_str(), W_OK) != 0) throw InputError("output folder " + dir + " is not writable");
  cleanup.keep();
  return made;
}

CreatedFolders::~CreatedFolders() {
  // The deepest folder may hold the job's lock file (output_lock.h): it was made for this job, so no other job
  // depends on that file.
  if (!folders_.empty()) ::unlink((folders_.back() + "/" + kOutputLockName).c_str());
  for (auto it = folders_.rbegin(); it != folders_.rend(); ++it) ::rmdir(it->c_str());  // fails, harmlessly, if not empty
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

OptimizeReport::OptimizeReport(const std::string& out_dir, long rows, int classes, int height, int width, int steps,
                               std::vector<float> target_dist, bool judged)
    : dir_(out_dir), classes_(classes), height_(height), width_(width), steps_(steps), target_dist_(std::move(target_dist)),
      judged_rows_(judged) {
  ensure_output_dir(dir_);
  csv_ = std::make_unique<AtomicFile>(dir_ + "/results.csv");
  npy_ = std::make_unique<NpyStreamWriter>(dir_ + "/images.npy", std::vector<int64_t>{rows, height, width});
  std::string header = "index,source,label,target,success,steps_to_success,updates,start_class,final_class";
  for (int k = 0; k < classes_; ++k) header += ",p" + std::to_string(k);
  header += ",loss,eps,linf,l2";
  if (!target_dist_.empty()) header += ",max_dev";
  if (judged_rows_) header += ",judge_class,judge_p_target";
  header += "\n";
  csv_->write(header);
}

std::string OptimizeReport::format_line(const RowResult& r, bool* within_band) const {
  const int final_class = static_cast<int>(std::max_element(r.probs.begin(), r.probs.end()) - r.probs.begin());
  std::string line = std::to_string(r.row) + "," + csv_field(r.source_name) + "," + (r.label >= 0 ? std::to_string(r.label) : "") +
                     "," + target_name(r.target) + "," + (r.success ? "1" : "0") + "," +
                     (r.success ? std::to_string(r.success_step) : "") + "," + std::to_string(r.updates) + "," +
                     std::to_string(r.start_class) + "," + std::to_string(final_class);
  for (float p : r.probs) append_g6(line, p);
  for (float v : {r.loss, r.eps, r.linf, r.l2}) append_g6(line, v);
  *within_band = false;
  if (!target_dist_.empty()) {
    double dev = 0;
    for (int k = 0; k < classes_; ++k) dev = std::max(dev, std::fabs(static_cast<double>(r.probs[k]) - target_dist_[k]));
    *within_band = dev <= kBand;
    append_g6(line, dev);
  }
  if (judged_rows_) {
    line += "," + std::to_string(r.judge_class);
    if (r.target.kind == TargetKind::OneHot && r.judge_p_target >= 0) append_g6(line, r.judge_p_target);
    else line += ",";
  }
  line += '\n';
  return line;
}

void OptimizeReport::row(const RowResult& r) {
  bool within_band = false;
  std::string line = format_line(r, &within_band);
  record(r, std::move(line), within_band);
}

void OptimizeReport::rows(const std::vector<RowResult>& batch, long) {
  // Formatting is most of a row's cost and independent per row: do it on all cores, then record in order.
  std::vector<std::string> lines(batch.size());
  std::vector<char> band(batch.size());
  ParallelErrors errors;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < batch.size(); ++i) errors.run([&] {
    bool b = false;
    lines[i] = format_line(batch[i], &b);
    band[i] = b;
  });
  errors.rethrow();
  for (size_t i = 0; i < batch.size(); ++i) record(batch[i], std::move(lines[i]), band[i] != 0);
}

void OptimizeReport::record(const RowResult& r, std::string line, bool within_band) {
  check_finite(r);
  const int final_class = static_cast<int>(std::max_element(r.probs.begin(), r.probs.end()) - r.probs.begin());
  char buf[64];
  within_band_ += within_band;
  if (judged_rows_ && r.target.kind == TargetKind::OneHot && r.judge_p_target >= 0) {  // < 0: a class the judge lacks
    ++judged_;
    judge_agree_ += r.judge_p_target >= 0.5f;
  }
  csv_->write(line);
  npy_->append(r.image, static_cast<size_t>(height_) * width_);
  if (keep_all_) all_images_.insert(all_images_.end(), r.image, r.image + static_cast<size_t>(height_) * width_);

  ++rows_;
  // Sized by the updates the rows took, not by the --steps budget: one image that succeeds at once under
  // --steps 2147483647 must not cost 16 GiB.
  most_updates_ = std::max(most_updates_, std::min(r.updates, steps_));
  if (r.success) {
    ++successes_;
    const size_t at = static_cast<size_t>(std::max(0, std::min(r.success_step, steps_)));
    if (success_at_step_.size() <= at) success_at_step_.resize(at + 1, 0);
    ++success_at_step_[at];
    success_steps_.push_back(r.success_step);
  }
  if (r.label >= 0) {
    ++labelled_;
    if (r.start_class == r.label) {
      ++correct_before_;
      correct_before_successes_ += r.success;
    }
  }
  if (grid_.size() < kGridCells) {
    const int D = height_ * width_;
    std::string caption = std::string(r.success ? "+" : "-") + (r.label >= 0 ? std::to_string(r.label) : "") + ">" +
                          (r.target.kind == TargetKind::Untargeted ? "not" + std::to_string(r.label)
                                                                   : target_name(r.target));
    std::snprintf(buf, sizeof buf, " %d:%.0f%%", final_class, 100 * r.probs[final_class]);
    grid_.push_back({std::vector<float>(r.start, r.start + D), std::vector<float>(r.image, r.image + D), caption + buf});
  }
}

void OptimizeReport::check_finite(const RowResult& r) const {
  const size_t D = static_cast<size_t>(height_) * width_;
  bool finite = std::all_of(r.probs.begin(), r.probs.end(), [](float p) { return std::isfinite(p); });
  for (size_t i = 0; finite && i < D; ++i) finite = std::isfinite(r.image[i]);
  if (!finite)
    throw InputError("row " + std::to_string(r.row) + " (" + r.source_name +
                     ") came out as NaN or infinity: the model's outputs or the step size overflow float; lower --lr "
                     "or check the model (no results written)");
}

nlohmann::json OptimizeReport::progress_summary() const {
  return {{"rows_done", rows_},
          {"successes", successes_},
          {"success_rate", rows_ ? static_cast<double>(successes_) / rows_ : 0.0}};
}

nlohmann::json OptimizeReport::finish(const nlohmann::json& job_spec, long image_steps, int entries_per_row) {
  std::vector<SheetCell> cells;
  for (const GridItem& g : grid_) cells.push_back({g.start.data(), g.image.data(), width_, height_, g.caption});
  if (!cells.empty()) write_contact_sheet(dir_ + "/grid.png", cells, 10, 2);

  nlohmann::json s;
  s["job"] = job_spec;
  s["rows"] = rows_;
  s["entries"] = rows_ * entries_per_row;
  s["entries_per_row"] = entries_per_row;
  s["success_rate"] = rows_ ? static_cast<double>(successes_) / rows_ : 0.0;
  s["successes"] = successes_;
  s["success_denominator"] = "all " + std::to_string(rows_) + " rows (start image x target)";
  if (labelled_ > 0) {
    s["correct_before"] = correct_before_;
    s["success_rate_correct_before"] =
        correct_before_ ? static_cast<double>(correct_before_successes_) / correct_before_ : 0.0;
    s["success_denominator_correct_before"] =
        std::to_string(correct_before_) + " rows whose start image the model classified correctly";
  }
  if (judged_rows_) {
    s["judge_rows"] = judged_;
    s["judge_agreement"] = judged_ ? static_cast<double>(judge_agree_) / judged_ : 0.0;
    s["judge_agreement_definition"] = "fraction of one-hot rows whose image the judge gives the target class p >= 0.5";
  }
  if (!target_dist_.empty()) s["soft_within_0.01"] = rows_ ? static_cast<double>(within_band_) / rows_ : 0.0;
  // Cumulative: the fraction of rows that had met their goal after at most s updates, for s up to the most updates
  // any row took (later entries would repeat the last).
  std::vector<double> by_step;
  long cum = 0;
  for (size_t step = 0; step <= static_cast<size_t>(most_updates_); ++step) {
    if (step < success_at_step_.size()) cum += success_at_step_[step];
    by_step.push_back(rows_ ? static_cast<double>(cum) / rows_ : 0.0);
  }
  s["success_rate_by_step"] = by_step;
  if (!success_steps_.empty()) {
    std::vector<int> v = success_steps_;
    std::sort(v.begin(), v.end());
    double mean = 0;
    for (int x : v) mean += x;
    s["mean_steps_to_success"] = mean / v.size();
    s["median_steps_to_success"] = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  } else {
    s["mean_steps_to_success"] = nullptr;
    s["median_steps_to_success"] = nullptr;
  }
  s["image_steps"] = image_steps;

  csv_->commit();
  npy_->commit();
  return s;
}

}  // namespace nudge
