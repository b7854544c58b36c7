// The optimize engine on the CPU backend: chunking is invisible. A job run in chunks of 7 or 64 entries gives
// bit-identical rows to the job run whole (one-hot targets with early stop, a soft target, eps lists with restarts
// and random starts), and start images are Philox noise per pixel (counter_uniform) that depends on neither the chunk
// size nor the OpenMP thread count. A tiny random model stands in: the weights do not matter here.
#include "optimize_engine.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "counter_rng.h"
#include "engine_rows.h"
#include "optimize_job.h"
#include "optimize_math.h"
#include "start_images.h"

namespace nudge {
namespace {

using testing_support::kD;
using testing_support::kK;
using testing_support::kSide;
using testing_support::noise_job;
using testing_support::Row;
using testing_support::run_job;
using testing_support::small_model;

// Every float of a row, for comparisons: loss, eps, distances, probabilities, start and reported image.
std::vector<float> row_floats(const Row& row) {
  std::vector<float> f = {row.r.loss, row.r.eps, row.r.linf, row.r.l2};
  f.insert(f.end(), row.r.probs.begin(), row.r.probs.end());
  f.insert(f.end(), row.start.begin(), row.start.end());
  f.insert(f.end(), row.image.begin(), row.image.end());
  return f;
}

// Rows must agree in every discrete field, and in every float bit for bit. The float check reports how far apart
// the rows are, so that a last-bit drift (say, a reduction whose order depends on the batch) reads differently from
// a mix-up of entries.
void expect_rows_identical(const std::vector<Row>& a, const std::vector<Row>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  int mismatched = 0, inexact = 0;
  long first_inexact = -1;
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const RowResult &x = a[i].r, &y = b[i].r;
    const bool discrete_same = x.row == y.row && x.source == y.source && x.source_name == y.source_name &&
                               x.dataset_index == y.dataset_index && x.label == y.label &&
                               x.start_class == y.start_class && x.target.kind == y.target.kind &&
                               x.target.cls == y.target.cls && x.success == y.success &&
                               x.success_step == y.success_step && x.updates == y.updates && x.restart == y.restart;
    if (!discrete_same && ++mismatched <= 5)
      ADD_FAILURE() << what << ": row " << i << " differs: source " << x.source << "/" << y.source << ", target "
                    << x.target.cls << "/" << y.target.cls << ", success " << x.success << "/" << y.success
                    << ", step " << x.success_step << "/" << y.success_step << ", updates " << x.updates << "/"
                    << y.updates << ", restart " << x.restart << "/" << y.restart;
    const std::vector<float> fx = row_floats(a[i]), fy = row_floats(b[i]);
    ASSERT_EQ(fx.size(), fy.size()) << what << ": row " << i;
    if (std::memcmp(fx.data(), fy.data(), fx.size() * sizeof(float)) != 0) {
      if (first_inexact < 0) first_inexact = static_cast<long>(i);
      ++inexact;
      for (size_t k = 0; k < fx.size(); ++k) max_diff = std::max(max_diff, std::fabs(static_cast<double>(fx[k]) - fy[k]));
    }
  }
  EXPECT_EQ(mismatched, 0) << what << ": " << mismatched << " of " << a.size() << " rows differ in success, steps or targets";
  EXPECT_EQ(inexact, 0) << what << ": " << inexact << " of " << a.size()
                        << " rows are not bit-identical (first row " << first_inexact
                        << ", largest difference in loss/probabilities/pixels " << max_diff << ")";
}

// ---- chunking ----------------------------------------------------------------------------------------------------

TEST(OptimizeEngine, ChunkedEqualsWholeNoiseTargetAll) {
  constexpr long kCount = 100;
  OptimizeJob job = noise_job(kCount, 10);
  job.step.stop_prob = 0.9f;  // early stop shrinks the active set at different times in different chunks
  job.step.early_stop = true;
  EngineStats whole_stats;
  const std::vector<Row> whole = run_job(small_model(), job, nullptr, &whole_stats);
  EXPECT_EQ(whole_stats.chunks, 1);
  int successes = 0, stopped_early = 0;
  for (const Row& r : whole) {
    successes += r.r.success;
    stopped_early += r.r.updates < job.steps;
  }
  // Both outcomes must occur, or the comparison would not exercise early stop next to running entries.
  EXPECT_GT(successes, 0);
  EXPECT_LT(successes, kCount);
  EXPECT_GT(stopped_early, 0);
  for (int chunk : {7, 64}) {
    job.chunk = chunk;
    EngineStats stats;
    const std::vector<Row> chunked = run_job(small_model(), job, nullptr, &stats);
    EXPECT_EQ(stats.chunks, (kCount + chunk - 1) / chunk);
    expect_rows_identical(whole, chunked, "chunk " + std::to_string(chunk));
  }
}

TEST(OptimizeEngine, ChunkedEqualsWholeSoftTarget) {
  OptimizeJob job = noise_job(70, 12);
  job.target = "";
  job.target_dist = {0.5f, 0.0f, 0.0f, 0.25f, 0.0f, 0.0f, 0.0f, 0.25f, 0.0f, 0.0f};
  job.step.loss = LossKind::KL;
  job.step.stop_kl = 0.1f;  // about half the rows get there within the budget
  job.step.early_stop = true;
  const std::vector<Row> whole = run_job(small_model(), job);
  int successes = 0;
  for (const Row& r : whole) {
    EXPECT_EQ(r.r.target.kind, TargetKind::Soft);
    EXPECT_EQ(r.r.success, kl_divergence(job.target_dist.data(), r.r.probs.data(), kK) <= job.step.stop_kl);
    successes += r.r.success;
  }
  EXPECT_GT(successes, 0);
  EXPECT_LT(successes, 70);
  for (int chunk : {7, 64}) {
    job.chunk = chunk;
    expect_rows_identical(whole, run_job(small_model(), job), "soft, chunk " + std::to_string(chunk));
  }
}

TEST(OptimizeEngine, ChunkedEqualsWholeWithEpsListAndRestarts) {
  // 2 eps values x 2 restarts = 4 entries per row: chunk 7 holds one row, chunk 64 sixteen.
  OptimizeJob job = noise_job(20, 8);
  job.eps = {0.05f, 0.2f};
  job.step.norm = Norm::Linf;
  job.random_start = true;
  job.restarts = 2;
  job.step.stop_prob = 0.5f;
  job.step.early_stop = true;
  const std::vector<Row> whole = run_job(small_model(), job);
  EXPECT_EQ(whole.size(), 20u);
  for (int chunk : {7, 64}) {
    job.chunk = chunk;
    expect_rows_identical(whole, run_job(small_model(), job), "eps list, chunk " + std::to_string(chunk));
  }
}

// ---- start images --------------------------------------------------------------------------------------------------

TEST(OptimizeEngine, NoiseImageIsCounterUniformPerPixel) {
  std::vector<float> a(kD), b(kD);
  for (long index : {0L, 1L, 17L, 123456789L, (1L << 33) + 5}) {
    noise_image(42, index, kD, a.data());
    noise_image(42, index, kD, b.data());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "index " << index;
    for (int p = 0; p < kD; ++p) {
      ASSERT_EQ(a[p], counter_uniform(42, kStreamNoise, static_cast<uint64_t>(index), p)) << "index " << index << " pixel " << p;
      ASSERT_GE(a[p], 0.0f);
      ASSERT_LT(a[p], 1.0f);
    }
  }
  // An odd size (not a multiple of the generator's 4-value blocks) gives a prefix of the same sequence.
  std::vector<float> odd(kD - 3);
  noise_image(42, 17, kD - 3, odd.data());
  noise_image(42, 17, kD, a.data());
  EXPECT_EQ(0, std::memcmp(odd.data(), a.data(), odd.size() * sizeof(float)));
  // Other seeds and indices give other images.
  noise_image(43, 17, kD, b.data());
  EXPECT_NE(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

TEST(OptimizeEngine, StartImagesIndependentOfChunkAndThreads) {
  OptimizeJob job = noise_job(20, 3);
  const StartImages starts(job, nullptr, kSide, kSide);
  std::vector<float> filled(kD), expect(kD);

  const int saved = omp_get_max_threads();
  const std::vector<std::pair<int, int>> configs = {{1, 0}, {1, 7}, {2, 0}, {2, 7}};  // (threads, chunk)
  std::vector<std::vector<Row>> runs;
  for (const auto& [threads, chunk] : configs) {
    omp_set_num_threads(threads);  // the CPU backend sizes its thread pool when it is made
    job.chunk = chunk;
    runs.push_back(run_job(small_model(), job));
  }
  omp_set_num_threads(saved);

  for (size_t k = 0; k < runs.size(); ++k) {
    ASSERT_EQ(runs[k].size(), 20u);
    for (long i = 0; i < 20; ++i) {
      starts.fill(i, filled.data());
      noise_image(job.seed, i, kD, expect.data());
      ASSERT_EQ(0, std::memcmp(filled.data(), expect.data(), kD * sizeof(float))) << "image " << i;
      ASSERT_EQ(0, std::memcmp(runs[k][i].start.data(), expect.data(), kD * sizeof(float))) << "run " << k << " image " << i;
      EXPECT_EQ(runs[k][i].r.source_name, "noise:" + std::to_string(i));
    }
  }
  // With the same chunking the whole results agree across thread counts: a micro-batch runs on one thread, whichever.
  expect_rows_identical(runs[0], runs[2], "1 vs 2 threads, whole");
  expect_rows_identical(runs[1], runs[3], "1 vs 2 threads, chunk 7");
}

}  // namespace
}  // namespace nudge
