// The engine's reaction to a device running out of memory on a chunk: halve the chunk and carry on, with the same
// results as a run that never ran out (results do not depend on chunking).
#include <gtest/gtest.h>

#include <new>

#include "cpu_backend.h"
#include "delegating_backend.h"
#include "optimize_engine.h"

namespace nudge {
namespace {

// A CPU backend that refuses chunks larger than `limit` entries, as a GPU short of memory would.
class SmallMemoryBackend : public testing_support::DelegatingBackend {
 public:
  explicit SmallMemoryBackend(int limit) : limit_(limit) {}
  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
    ++attempts;
    if (in.n > limit_) throw std::bad_alloc();
    largest_accepted = std::max(largest_accepted, in.n);
    return inner().begin_optimize(in, cfg);
  }

  int attempts = 0, largest_accepted = 0;

 private:
  int limit_;
};

struct Collect : RowSink {
  std::vector<float> images, probs;
  void row(const RowResult& r) override {
    images.insert(images.end(), r.image, r.image + 784);
    probs.insert(probs.end(), r.probs.begin(), r.probs.end());
  }
};

TEST(EngineOutOfMemory, HalvesTheChunkAndMatchesAnUnconstrainedRun) {
  const Model model = Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 3);
  OptimizeJob job;
  job.count = 50;
  job.target = "all";
  job.steps = 3;
  const StartImages starts(job, nullptr, 28, 28);

  SmallMemoryBackend small(12);
  small.load_model(model);
  Collect constrained;
  run_optimize(small, model, job, starts, constrained, false);
  EXPECT_GT(small.attempts, 5) << "the engine should have retried after running out of memory";
  EXPECT_LE(small.largest_accepted, 12);

  auto cpu = make_cpu_backend();
  cpu->load_model(model);
  Collect whole;
  run_optimize(*cpu, model, job, starts, whole, false);
  ASSERT_EQ(constrained.images.size(), whole.images.size());
  EXPECT_EQ(constrained.images, whole.images);
  EXPECT_EQ(constrained.probs, whole.probs);
}

TEST(EngineOutOfMemory, GivesUpWhenASingleRowDoesNotFit) {
  const Model model = Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 3);
  OptimizeJob job;
  job.count = 4;
  job.target = "all";
  job.steps = 1;
  const StartImages starts(job, nullptr, 28, 28);
  SmallMemoryBackend none(0);
  none.load_model(model);
  Collect sink;
  EXPECT_THROW(run_optimize(none, model, job, starts, sink, false), std::bad_alloc);
}

}  // namespace
}  // namespace nudge
