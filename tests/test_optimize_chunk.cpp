// The optimize chunk API (Backend::begin_optimize, step, finish) on the CPU backend: an entry that met its goal
// under early stop is frozen (image, probabilities, update count) however many steps follow, and the active count
// never grows; without early stop every entry stays active, the success step is still recorded, and the reported
// image is the first goal-meeting iterate. A tiny random model stands in: the weights do not matter here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend.h"
#include "counter_rng.h"
#include "cpu_backend.h"
#include "engine_rows.h"
#include "optimize_types.h"
#include "start_images.h"

namespace nudge {
namespace {

using testing_support::kD;
using testing_support::kK;
using testing_support::small_model;

// ---- the chunk API ------------------------------------------------------------------------------------------------

// n one-hot entries on noise images, targets 0..9 in turn.
struct ChunkFixture {
  int n;
  std::vector<float> start, dist;
  std::vector<int32_t> kind, cls;
  ChunkInput input() const {
    ChunkInput in;
    in.n = n;
    in.start = start.data();
    in.target_dist = dist.data();
    in.target_kind = kind.data();
    in.target_class = cls.data();
    return in;
  }
  explicit ChunkFixture(int count) : n(count), start(static_cast<size_t>(count) * kD), dist(static_cast<size_t>(count) * kK, 0.0f),
                                     kind(count, static_cast<int32_t>(TargetKind::OneHot)), cls(count) {
    for (int i = 0; i < n; ++i) {
      noise_image(5, i, kD, start.data() + static_cast<size_t>(i) * kD);
      cls[i] = i % kK;
      dist[static_cast<size_t>(i) * kK + cls[i]] = 1.0f;
    }
  }
};

ChunkResult run_chunk(Backend& backend, const ChunkFixture& f, const StepConfig& cfg, int steps,
                      std::vector<int>* active_after_step = nullptr) {
  auto chunk = backend.begin_optimize(f.input(), cfg);
  for (int s = 0; s < steps; ++s) {
    chunk->step();
    if (active_after_step) active_after_step->push_back(chunk->active_count());
  }
  return chunk->finish();
}

bool same_images_and_probs(const ChunkResult& a, const ChunkResult& b, int i) {
  return std::memcmp(a.best_images.data() + static_cast<size_t>(i) * kD, b.best_images.data() + static_cast<size_t>(i) * kD,
                     kD * sizeof(float)) == 0 &&
         std::memcmp(a.best_probs.data() + static_cast<size_t>(i) * kK, b.best_probs.data() + static_cast<size_t>(i) * kK,
                     kK * sizeof(float)) == 0;
}

bool same_entry(const ChunkResult& a, const ChunkResult& b, int i) {
  return a.success_step[i] == b.success_step[i] && a.updates[i] == b.updates[i] && same_images_and_probs(a, b, i);
}

TEST(OptimizeChunk, EarlyStoppedEntriesAreFrozen) {
  auto backend = make_cpu_backend();
  backend->load_model(small_model());
  const ChunkFixture f(40);
  StepConfig cfg;
  cfg.stop_prob = 0.9f;
  cfg.early_stop = true;
  constexpr int kShort = 5, kLong = 15;
  std::vector<int> active;
  const ChunkResult a = run_chunk(*backend, f, cfg, kShort);
  const ChunkResult b = run_chunk(*backend, f, cfg, kLong, &active);
  EXPECT_TRUE(std::is_sorted(active.rbegin(), active.rend())) << "the active count never grows";
  int frozen = 0;
  for (int i = 0; i < f.n; ++i) {
    if (a.success_step[i] >= 0) {
      // Met by the end of the short run: ten more step() calls changed nothing about it.
      ++frozen;
      EXPECT_TRUE(same_entry(a, b, i)) << "entry " << i;
      EXPECT_EQ(b.updates[i], b.success_step[i]) << "entry " << i;
      EXPECT_LT(b.updates[i], kLong) << "entry " << i;
      const float* p = b.best_probs.data() + static_cast<size_t>(i) * kK;
      EXPECT_GE(p[f.cls[i]], cfg.stop_prob) << "entry " << i;
    } else if (b.success_step[i] >= 0) {
      EXPECT_GT(b.success_step[i], kShort);
      EXPECT_EQ(b.updates[i], b.success_step[i]);
    } else {
      EXPECT_EQ(b.updates[i], kLong) << "entry " << i;
    }
  }
  EXPECT_GT(frozen, 0) << "no entry met its goal within " << kShort << " steps; the test proves nothing";
  EXPECT_LT(frozen, f.n);
  EXPECT_EQ(active.back(), std::count(b.success_step.begin(), b.success_step.end(), -1) +
                               std::count_if(b.success_step.begin(), b.success_step.end(), [](int s) { return s == kLong; }));
}

TEST(OptimizeChunk, WithoutEarlyStopTheFirstGoalMeetingIterateIsReported) {
  auto backend = make_cpu_backend();
  backend->load_model(small_model());
  const ChunkFixture f(40);
  StepConfig cfg;
  cfg.stop_prob = 0.9f;
  cfg.early_stop = false;
  constexpr int kBudget = 10;
  std::vector<int> active;
  const ChunkResult full = run_chunk(*backend, f, cfg, kBudget, &active);
  for (int a : active) EXPECT_EQ(a, f.n) << "without early stop every entry stays active";
  int met = 0, checked = 0;
  for (int i = 0; i < f.n; ++i) {
    EXPECT_EQ(full.updates[i], kBudget) << "entry " << i;
    if (full.success_step[i] < 0) continue;
    ++met;
    const float* p = full.best_probs.data() + static_cast<size_t>(i) * kK;
    EXPECT_GE(p[f.cls[i]], cfg.stop_prob) << "entry " << i;
    // A run whose budget ends on iterate success_step (finish() judges the final iterate) holds that iterate; the
    // full run must report the same one although it went on for more updates. Every entry stays active in both runs,
    // so both see identical batches and the comparison is exact. Each check reruns the chunk: a few suffice.
    if (checked >= 3 || full.success_step[i] == 0) continue;
    ++checked;
    const ChunkResult upto = run_chunk(*backend, f, cfg, full.success_step[i]);
    EXPECT_EQ(upto.success_step[i], full.success_step[i]) << "entry " << i;
    EXPECT_EQ(upto.updates[i], full.success_step[i]) << "entry " << i;
    EXPECT_TRUE(same_images_and_probs(upto, full, i)) << "entry " << i;
    // ...and it is the first such iterate: one update fewer, no iterate had met the goal.
    const ChunkResult before = run_chunk(*backend, f, cfg, full.success_step[i] - 1);
    EXPECT_EQ(before.success_step[i], -1) << "entry " << i;
  }
  EXPECT_GT(met, 3);
  EXPECT_LT(met, f.n);
  EXPECT_EQ(checked, 3);
}

}  // namespace
}  // namespace nudge
