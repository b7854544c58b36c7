// Fuzzes --target-dist as the CLI reads it: the float list parser, then the job's validation against 10 classes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "errors.h"
#include "optimize_job.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    nudge::OptimizeJob job;
    job.target_dist = nudge::parse_float_list(text, "--target-dist");
    for (float v : job.target_dist)
      if (!std::isfinite(v)) __builtin_trap();
    nudge::validate_job(job, 10);
    double sum = 0;
    for (float v : job.target_dist) sum += v;
    if (!(std::fabs(sum - 1.0) <= 1e-6) || job.target_dist.size() != 10) __builtin_trap();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
