// Where an optimize job's rows go as the engine makes them: the judge's verdict is added (when there is a judge), the
// report records them, and the journal keeps them on disk, chunk by chunk, for --resume and merges (row_journal.h).
// Runs on the engine's writer thread.
#pragma once
#include <vector>

#include "backend.h"
#include "optimize_engine.h"
#include "optimize_report.h"
#include "row_journal.h"

namespace nudge {

// Fills each row's judge_class and judge_p_target from `judge` (in batches: one image at a time would cost more than
// the optimization). The judge must be a backend object of its own, since it predicts while the optimizing backend
// computes the next chunk (on a GPU: its own context and stream).
// judge_K: the judge's classes, at most the model's (an open-set model's judge knows only the digits); a row toward
// a class the judge does not have gets judge_p_target = -1 (not judged).
void judge_rows(Backend& judge, std::vector<RowResult>& rows, int D, int judge_K);

class JobSink : public RowSink {
 public:
  // judge and report may be null (an MPI rank only judges and sends its rows); journal may be null (none kept).
  JobSink(Backend* judge, OptimizeReport* report, RowBlockSink* journal, int D, int K, int judge_K = 0)
      : judge_(judge), report_(report), journal_(journal), D_(D), K_(K), judge_K_(judge_K > 0 ? judge_K : K) {}
  void row(const RowResult& r) override { rows({r}, 0); }
  void rows(const std::vector<RowResult>& batch, long image_steps) override;
  long image_steps() const { return image_steps_; }

 private:
  Backend* judge_;
  OptimizeReport* report_;
  RowBlockSink* journal_;
  int D_, K_, judge_K_;
  long image_steps_ = 0;
  std::vector<RowResult> judged_;
};

}  // namespace nudge
