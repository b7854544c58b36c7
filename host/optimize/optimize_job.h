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

// Pca: a random image of the Gaussian of reg.pca (pca_sample_image) in its first pca_start_components components.
enum class InitKind { Noise, Gauss, Gray, Test, Train, Images, Pca };

// Dataset images begin..end-1; empty when end <= begin.
struct IndexRange {
  long begin = 0, end = 0;
  bool empty() const { return end <= begin; }
};

// Upper bounds on the job's sizes, so that every count derived from them fits the int and long the engine uses and a
// flag cannot ask for gigabytes before the first image runs.
constexpr int kMaxRestarts = 1000;
constexpr size_t kMaxEpsValues = 1000;

// --target as parsed once, when the job is read: a class, or a rule that picks the class per start image. Built from
// the flag's text (implicitly, so `job.target = "all"` reads as the flag does); text the grammar does not know is
// kept as Invalid and refused by validate_job, which also checks a class against the model.
struct TargetSpec {
  enum class Kind { None, Class, All, Other, Next, Untargeted, Invalid };
  Kind kind = Kind::None;
  long cls = -1;     // Kind::Class
  std::string text;  // as given, for messages and summary.json
  TargetSpec() = default;
  TargetSpec(const std::string& text);  // NOLINT(google-explicit-constructor): a flag's text is a spec
  TargetSpec(const char* text) : TargetSpec(std::string(text)) {}  // NOLINT(google-explicit-constructor)
  bool empty() const { return kind == Kind::None; }
  // next, other and untargeted derive the class from the start image's true label.
  bool needs_labels() const { return kind == Kind::Next || kind == Kind::Other || kind == Kind::Untargeted; }
};

struct OptimizeJob {
  InitKind init = InitKind::Noise;
  std::string image_dir;         // InitKind::Images: a folder of PNG/PGM files (sorted by name)
  long count = 1;                // Noise/Gauss/Gray: how many start images
  std::vector<int> indices;      // Test/Train: which images (empty = the first `count`, or the range below)
  IndexRange range;              // Test/Train: --range START:END, expanded only once the split's size is known
  float gauss_sigma = 0.15f;     // Gauss: N(0.5, sigma^2), clamped to [0,1]
  float gray_value = 0.5f;       // Gray
  int pca_start_components = 16; // Pca: the leading components the start draws (at most the basis'; the rest start at 0)
  TargetSpec target;             // "3" | "all" | "other" | "next" | "untargeted"; none when target_dist is used
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
IndexRange parse_range(const std::string& text, const std::string& flag);  // "a:b" -> [a, b)
// A finite number from a flag's text; InputError "FLAG: 'TEXT' is not a finite number" otherwise.
float parse_finite(const std::string& text, const std::string& flag);

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
