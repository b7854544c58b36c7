#include "evaluate.h"

#include <algorithm>

#include "progress.h"

namespace nudge {

double EvalResult::class_accuracy(int c) const {
  long total = 0;
  for (int p = 0; p < classes; ++p) total += confusion[static_cast<size_t>(c) * classes + p];
  return total ? static_cast<double>(confusion[static_cast<size_t>(c) * classes + c]) / total : 0;
}

EvalResult evaluate_model(Backend& backend, const Dataset& data, int classes, int limit, bool progress) {
  constexpr int kBatch = 1024;
  EvalResult r;
  r.count = limit > 0 && limit < data.count ? limit : data.count;
  const int D = data.rows * data.cols;
  r.classes = classes;
  r.confusion.assign(static_cast<size_t>(classes) * classes, 0);
  std::vector<float> x(static_cast<size_t>(kBatch) * D), probs(static_cast<size_t>(kBatch) * classes);
  ProgressBar bar("eval", r.count);
  for (int b = 0; b < r.count; b += kBatch) {
    const int n = std::min(kBatch, r.count - b);
    for (int i = 0; i < n; ++i) data.image_as_float(b + i, x.data() + static_cast<size_t>(i) * D);
    backend.predict(x.data(), n, probs.data());
    for (int i = 0; i < n; ++i) {
      const float* p = probs.data() + static_cast<size_t>(i) * r.classes;
      const int pred = static_cast<int>(std::max_element(p, p + r.classes) - p);
      const int label = data.labels[b + i];
      r.correct += pred == label;
      r.confusion[static_cast<size_t>(label) * r.classes + pred] += 1;
    }
    if (progress) bar.update(b + n, "");
  }
  r.seconds = bar.elapsed_seconds();
  bar.finish();
  return r;
}

}  // namespace nudge
