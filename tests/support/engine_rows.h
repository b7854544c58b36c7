// The optimize engine on the CPU backend, for the engine suites (tests/test_optimize_*.cpp and
// tests/test_validate_job.cpp): a job run through run_optimize with every row collected (start and reported images
// copied out), the tiny random model that stands in where the weights do not matter, and the noise-image job most
// tests start from.
#pragma once
#include <vector>

#include "dataset.h"
#include "model.h"
#include "optimize_engine.h"
#include "optimize_job.h"

namespace nudge::testing_support {

constexpr int kSide = 28;
constexpr int kD = kSide * kSide;
constexpr int kK = 10;

// A RowResult with the start and reported images copied out (the sink's pointers live only during row()).
struct Row {
  RowResult r;
  std::vector<float> start, image;
};

class CollectSink : public RowSink {
 public:
  explicit CollectSink(int D) : D_(D) {}
  void row(const RowResult& r) override {
    Row c;
    c.r = r;
    c.r.start = nullptr;
    c.r.image = nullptr;
    c.start.assign(r.start, r.start + D_);
    c.image.assign(r.image, r.image + D_);
    rows.push_back(std::move(c));
  }
  std::vector<Row> rows;

 private:
  int D_;
};

// 1x28x28:conv4k3,relu,pool2,flatten,dense10 with Glorot weights (seed 7).
const Model& small_model();

// The job run on a fresh CPU backend; `data` for dataset starts, `stats_out` for the engine's counts.
std::vector<Row> run_job(const Model& model, const OptimizeJob& job, const Dataset* data = nullptr,
                         EngineStats* stats_out = nullptr);

// `count` noise images (seed 42), target "all", `steps` steps.
OptimizeJob noise_job(long count, int steps);

}  // namespace nudge::testing_support
