// Accuracy, per-class accuracy and the confusion matrix of a model on a dataset.
#pragma once
#include <vector>

#include "backend.h"
#include "dataset.h"

namespace nudge {

struct EvalResult {
  int count = 0, correct = 0, classes = 0;
  std::vector<long> confusion;  // [true][predicted], classes x classes
  double seconds = 0;
  double accuracy() const { return count ? static_cast<double>(correct) / count : 0; }
  double class_accuracy(int c) const;
};

// `classes` is the model's output count; labels must be below it.
EvalResult evaluate_model(Backend& backend, const Dataset& data, int classes, int limit = 0, bool progress = true);

}  // namespace nudge
