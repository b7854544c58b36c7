// A one-line progress bar on stderr. On a terminal it redraws in place (at most ~10 times a second); when stderr is
// a file or pipe (CI logs) it stays quiet, so logs hold only the lines printed with line().
#pragma once
#include <chrono>
#include <string>

namespace nudge {

class ProgressBar {
 public:
  ProgressBar(std::string label, long total);
  // done: units finished so far; detail: e.g. "loss 0.12 acc 97.1%". Unit rate and ETA are added.
  void update(long done, const std::string& detail, bool force = false);
  // Clears the bar and prints a permanent line.
  void line(const std::string& text);
  void finish();
  double elapsed_seconds() const;

 private:
  std::string label_;
  long total_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1m05s", "12.3s"

}  // namespace nudge
