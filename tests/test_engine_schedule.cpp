// The engine's schedule (optimize_engine.cpp): chunk k+1 is begun, so its upload can overlap chunk k's compute,
// before chunk k is finished; when two chunks do not fit on the backend together it falls back to one at a time
// rather than halving. Results never depend on the schedule.
#include <gtest/gtest.h>

#include <algorithm>
#include <new>
#include <string>
#include <vector>

#include "cpu_backend.h"
#include "delegating_backend.h"
#include "errors.h"
#include "optimize_engine.h"

namespace nudge {
namespace {

// A CPU backend that logs when chunks begin and finish and holds at most `budget` entries in live chunks (a GPU's
// memory), throwing std::bad_alloc from begin_optimize beyond it.
class LoggingBackend : public testing_support::DelegatingBackend {
 public:
  explicit LoggingBackend(int budget) : budget_(budget) {}
  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
    if (live_ + in.n > budget_) {
      log.push_back("refused " + std::to_string(begun_));
      throw std::bad_alloc();
    }
    live_ += in.n;
    most_live = std::max(most_live, live_);
    log.push_back("begin " + std::to_string(begun_));
    return std::make_unique<Chunk>(*this, begun_++, in.n, inner().begin_optimize(in, cfg));
  }

  std::vector<std::string> log;
  int most_live = 0;

 private:
  class Chunk : public OptimizeChunk {
   public:
    Chunk(LoggingBackend& b, int id, int n, std::unique_ptr<OptimizeChunk> inner)
        : b_(b), id_(id), n_(n), inner_(std::move(inner)) {}
    ~Chunk() override { b_.live_ -= n_; }
    void step() override { inner_->step(); }
    int active_count() const override { return inner_->active_count(); }
    ChunkResult finish() override {
      b_.log.push_back("finish " + std::to_string(id_));
      return inner_->finish();
    }

   private:
    LoggingBackend& b_;
    int id_, n_;
    std::unique_ptr<OptimizeChunk> inner_;
  };

  int budget_, live_ = 0, begun_ = 0;
};

struct Collect : RowSink {
  std::vector<long> rows;
  std::vector<float> images, probs;
  void row(const RowResult& r) override {
    rows.push_back(r.row);
    images.insert(images.end(), r.image, r.image + 784);
    probs.insert(probs.end(), r.probs.begin(), r.probs.end());
  }
};

long position(const std::vector<std::string>& log, const std::string& entry) {
  const auto it = std::find(log.begin(), log.end(), entry);
  return it == log.end() ? -1 : static_cast<long>(it - log.begin());
}

class EngineSchedule : public ::testing::Test {
 protected:
  EngineSchedule() : model_(Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 3)) {
    job_.count = 50;
    job_.target = "all";
    job_.steps = 3;
    job_.chunk = 10;  // 5 chunks of 10 entries
  }
  Collect run_on(Backend& b) {
    b.load_model(model_);
    const StartImages starts(job_, nullptr, 28, 28);
    Collect sink;
    run_optimize(b, model_, job_, starts, sink, false);
    return sink;
  }
  Model model_;
  OptimizeJob job_;
};

TEST_F(EngineSchedule, BeginsEachChunkBeforeFinishingThePreviousOne) {
  LoggingBackend b(1000);
  const Collect got = run_on(b);
  for (int k = 1; k < 5; ++k) {
    const long begun = position(b.log, "begin " + std::to_string(k));
    const long finished = position(b.log, "finish " + std::to_string(k - 1));
    ASSERT_GE(begun, 0) << "chunk " << k << " never began";
    ASSERT_GE(finished, 0) << "chunk " << k - 1 << " never finished";
    EXPECT_LT(begun, finished) << "chunk " << k << " began only after chunk " << k - 1 << " finished";
  }
  EXPECT_EQ(b.most_live, 20) << "two chunks should be live at once, never three";
  ASSERT_EQ(got.rows.size(), 50u);
  for (size_t i = 0; i < got.rows.size(); ++i) EXPECT_EQ(got.rows[i], static_cast<long>(i)) << "rows out of order";

  auto cpu = make_cpu_backend();
  const Collect whole = [&] {
    job_.chunk = 0;
    return run_on(*cpu);
  }();
  EXPECT_EQ(got.images, whole.images);
  EXPECT_EQ(got.probs, whole.probs);
}

TEST_F(EngineSchedule, RunsOneChunkAtATimeWhenTwoDoNotFit) {
  LoggingBackend b(10);  // room for exactly one chunk
  const Collect got = run_on(b);
  EXPECT_EQ(b.most_live, 10);
  for (int k = 1; k < 5; ++k) {
    EXPECT_GE(position(b.log, "refused " + std::to_string(k)), 0) << "chunk " << k << " should have been refused once";
    EXPECT_LT(position(b.log, "finish " + std::to_string(k - 1)), position(b.log, "begin " + std::to_string(k)));
  }
  auto cpu = make_cpu_backend();
  job_.chunk = 0;
  const Collect whole = run_on(*cpu);
  ASSERT_EQ(got.rows.size(), whole.rows.size());
  EXPECT_EQ(got.images, whole.images) << "falling back to one chunk at a time changed results";
  EXPECT_EQ(got.probs, whole.probs);
}

// The writer and preparer are threads: a failure on either side must reach the caller, not hang or vanish.
TEST_F(EngineSchedule, ASinkFailureReachesTheCaller) {
  struct FailingSink : RowSink {
    long seen = 0;
    void row(const RowResult&) override {
      if (++seen == 23) throw InputError("disk full at row 23");
    }
  };
  LoggingBackend b(1000);
  b.load_model(model_);
  const StartImages starts(job_, nullptr, 28, 28);
  FailingSink sink;
  try {
    run_optimize(b, model_, job_, starts, sink, false);
    FAIL() << "the sink's exception was swallowed";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "disk full at row 23");
  }
  EXPECT_EQ(sink.seen, 23) << "rows went on being written after the failure";
}

TEST_F(EngineSchedule, ABackendFailureMidJobReachesTheCaller) {
  // Fails in the third chunk's second step, while the fourth is already begun and the second's rows are queued.
  class FailingBackend : public LoggingBackend {
   public:
    FailingBackend() : LoggingBackend(1000) {}
    std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
      auto inner = LoggingBackend::begin_optimize(in, cfg);
      return std::make_unique<Failing>(std::move(inner), begun_++ == 2);
    }

   private:
    class Failing : public OptimizeChunk {
     public:
      Failing(std::unique_ptr<OptimizeChunk> inner, bool fail) : inner_(std::move(inner)), fail_(fail) {}
      void step() override {
        if (fail_ && ++steps_ == 2) throw InternalError("device lost");
        inner_->step();
      }
      int active_count() const override { return inner_->active_count(); }
      ChunkResult finish() override { return inner_->finish(); }

     private:
      std::unique_ptr<OptimizeChunk> inner_;
      bool fail_;
      int steps_ = 0;
    };
    int begun_ = 0;
  };
  FailingBackend b;
  b.load_model(model_);
  const StartImages starts(job_, nullptr, 28, 28);
  Collect sink;
  EXPECT_THROW(run_optimize(b, model_, job_, starts, sink, false), InternalError);
  EXPECT_LE(sink.rows.size(), 20u) << "only the first two chunks' rows can have been written";
  for (size_t i = 0; i < sink.rows.size(); ++i) EXPECT_EQ(sink.rows[i], static_cast<long>(i));
}

}  // namespace
}  // namespace nudge
