// An optimize job as the user states it, and its expansion into rows (one per start image x target) and batch
// entries (one per row x eps value x restart). Validation happens here, before any compute, with messages that
// name the rule that failed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "optimize_types.h"
#include "regularizers.h"

namespace nudge {

enum class InitKind { Noise, Gauss, Gray, Test, Train, Images };

struct OptimizeJob {
  InitKind init = InitKind::Noise;
  std::string image_dir;         // InitKind::Images: a folder of PNG/PGM files (sorted by name)
  long count = 1;                // Noise/Gauss/Gray: how many start images
  std::vector<int> indices;      // Test/Train: which images (empty = the first `count`)
  float gauss_sigma = 0.15f;     // Gauss: N(0.5, sigma^2), clamped to [0,1]
  float gray_value = 0.5f;       // Gray
  std::string target = "";       // "3" | "all" | "other" | "next" | "untargeted"; "" when target_dist is used
  std::vector<float> target_dist;
  StepConfig step;
  int steps = 20;                // update budget per entry
  std::vector<float> eps;        // several values -> several entries per row; empty = no eps-ball
  bool random_start = false;
  int restarts = 1;
  uint64_t seed = 1;
  int chunk = 0;                 // entries per chunk (0 = the backend's preference)
  RegularizerConfig reg;         // image priors (class visualisation); none by default
};

// Parsers for CLI values; InputError on bad text.
std::vector<float> parse_float_list(const std::string& text, const std::string& flag);
std::vector<int> parse_index_list(const std::string& text, const std::string& flag);
std::vector<int> parse_range(const std::string& text, const std::string& flag);  // "a:b" -> a..b-1

// Checks the job against the model's class count and whether start images carry labels; throws InputError.
void validate_job(const OptimizeJob& job, int classes);

// One row of the output: a start image paired with a target.
struct RowTarget {
  TargetKind kind = TargetKind::OneHot;
  int cls = 0;  // OneHot: the target class; Untargeted: the true label; Soft: -1
};

// The targets for a start image with true label `label` (-1 if unknown) and position `source` in the job.
std::vector<RowTarget> targets_for(const OptimizeJob& job, long source, int label, int classes);

// "2", "untargeted", "dist" — the target column of results.csv.
std::string target_name(const RowTarget& t);

}  // namespace nudge
