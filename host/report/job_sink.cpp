#include "job_sink.h"

#include <algorithm>

namespace nudge {

namespace {
constexpr size_t kJudgeBatch = 256;
}

void judge_rows(Backend& judge, std::vector<RowResult>& rows, int D, int K) {
  const size_t d = static_cast<size_t>(D), k = static_cast<size_t>(K);
  std::vector<float> x, probs;
  for (size_t first = 0; first < rows.size(); first += kJudgeBatch) {
    const size_t n = std::min(kJudgeBatch, rows.size() - first);
    x.resize(n * d);
    probs.resize(n * k);
    for (size_t i = 0; i < n; ++i) std::copy(rows[first + i].image, rows[first + i].image + d, x.begin() + i * d);
    judge.predict(x.data(), static_cast<int>(n), probs.data());
    for (size_t i = 0; i < n; ++i) {
      RowResult& r = rows[first + i];
      const float* p = probs.data() + i * k;
      r.judge_class = static_cast<int>(std::max_element(p, p + k) - p);
      r.judge_p_target = r.target.kind != TargetKind::OneHot ? 0.0f : r.target.cls < K ? p[r.target.cls] : -1.0f;
    }
  }
}

void JobSink::rows(const std::vector<RowResult>& batch, long image_steps) {
  const std::vector<RowResult>* out = &batch;
  if (judge_) {
    judged_ = batch;
    judge_rows(*judge_, judged_, D_, judge_K_);
    out = &judged_;
  }
  // The report first: it refuses a row that is not finite, and such a row must not reach the journal either.
  if (report_) report_->rows(*out, image_steps);
  if (journal_) journal_->append(*out, image_steps, D_, K_);
  image_steps_ += image_steps;
}

}  // namespace nudge
