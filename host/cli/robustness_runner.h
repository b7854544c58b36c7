// Running nudge robustness: the points' evaluation slice by slice (--chunk points at once) into a journal, so that an
// interrupted evaluation continues with --resume and the ranks of an MPI job each evaluate a part (rank 0 writes the
// folder); then results.csv, images.npy, robustness.png, summary.json and run.json committed as one set. Each point's
// draws are keyed by its index in the job, so the results do not depend on slices, ranks or resumes.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "optimize_job.h"
#include "robustness.h"

namespace nudge::cli {

struct RobustnessRun {
  RobustnessConfig cfg;
  std::string model, data, split, device, out;
  OptimizeJob pick;       // which points of the split (init test|train, count, range or indices)
  nlohmann::json spec;    // the evaluation as the user stated it (flags that change results), for summary.json
  bool resume = false;
  bool quiet = false;
};

// Returns the exit status (0).
int run_robustness(const RobustnessRun& run);

}  // namespace nudge::cli
