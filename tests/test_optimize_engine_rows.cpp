// The optimize engine on the CPU backend, its rows and targets: reported images stay in [0,1] and inside the
// eps-ball (L-inf and L2, with and without random starts); eps values x restarts give one row per image with the best
// entry; "other" gives K-1 rows per image; "next" targets label+1 mod K; untargeted success means argmax != label.
// A tiny random model stands in where the weights do not matter; the committed reference model is used where
// success must actually happen.
#include "optimize_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "counter_rng.h"
#include "cpu_backend.h"
#include "dataset.h"
#include "engine_rows.h"
#include "model.h"
#include "optimize_job.h"
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

const Model& reference_model() {
  static const Model m = Model::load(std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors");
  return m;
}

int argmax(const std::vector<float>& p) { return static_cast<int>(std::max_element(p.begin(), p.end()) - p.begin()); }

// A labelled in-memory "dataset" of noise images, so label-dependent targets need no MNIST files.
Dataset fake_dataset(int count, const std::function<int(int)>& label_of) {
  Dataset d;
  d.count = count;
  d.rows = kSide;
  d.cols = kSide;
  d.pixels.resize(static_cast<size_t>(count) * kD);
  std::vector<float> img(kD);
  for (int i = 0; i < count; ++i) {
    noise_image(99, i, kD, img.data());
    for (int p = 0; p < kD; ++p) d.pixels[static_cast<size_t>(i) * kD + p] = static_cast<uint8_t>(img[p] * 255.0f);
  }
  d.labels.resize(count);
  for (int i = 0; i < count; ++i) d.labels[i] = static_cast<uint8_t>(label_of(i));
  return d;
}

// ---- the eps-ball ---------------------------------------------------------------------------------------------------

TEST(OptimizeEngine, ReportedImagesStayInTheBallAndInRange) {
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    for (bool random_start : {false, true}) {
      OptimizeJob job = noise_job(8, 10);
      job.step.norm = norm;
      job.eps = norm == Norm::Linf ? std::vector<float>{0.03f, 0.3f} : std::vector<float>{0.5f, 3.0f};
      job.random_start = random_start;
      job.restarts = random_start ? 2 : 1;
      job.step.lr = 0.5f;  // large steps, so the projection has work to do
      const std::string what = std::string(to_string(norm)) + (random_start ? " random start" : "");
      const std::vector<Row> rows = run_job(small_model(), job);
      ASSERT_EQ(rows.size(), 8u) << what;
      bool moved = false;
      for (const Row& row : rows) {
        EXPECT_TRUE(std::find(job.eps.begin(), job.eps.end(), row.r.eps) != job.eps.end()) << what;
        double linf = 0, l2 = 0;
        for (int p = 0; p < kD; ++p) {
          ASSERT_GE(row.image[p], 0.0f) << what;
          ASSERT_LE(row.image[p], 1.0f) << what;
          const double d = std::fabs(static_cast<double>(row.image[p]) - row.start[p]);
          linf = std::max(linf, d);
          l2 += d * d;
        }
        l2 = std::sqrt(l2);
        moved = moved || linf > 0;
        // Float rounding of x0 +- eps and of the L2 rescaling: a few ulps over eps at most.
        if (norm == Norm::Linf) {
          EXPECT_LE(linf, row.r.eps + 1e-6) << what;
        } else {
          EXPECT_LE(l2, row.r.eps * (1 + 1e-5) + 1e-6) << what;
        }
        EXPECT_NEAR(row.r.linf, linf, 1e-6) << what;
        EXPECT_NEAR(row.r.l2, l2, 1e-4 * std::max(1.0, l2)) << what;
      }
      EXPECT_TRUE(moved) << what;
    }
  }
}

// ---- rows and targets ----------------------------------------------------------------------------------------------

// The engine's choice among a row's entries: success first, earlier success better, then lower loss; ties keep the
// earlier entry.
bool better_row(const RowResult& a, const RowResult& b) {
  if (a.success != b.success) return a.success;
  if (a.success && a.success_step != b.success_step) return a.success_step < b.success_step;
  return a.loss < b.loss;
}

TEST(OptimizeEngine, EpsListGivesOneRowPerImageWithTheBestEntry) {
  // Without random starts an entry depends only on its image, target and eps, so each eps value run alone gives the
  // candidates the combined job chooses from. With these radii some rows succeed under two radii at different steps
  // (0.4 binds later than 0.2), some at the same step, some under one radius only: every clause of the rule is used.
  OptimizeJob job = noise_job(16, 10);
  job.step.norm = Norm::Linf;
  job.eps = {0.1f, 0.2f, 0.4f};
  job.step.stop_prob = 0.6f;
  job.step.early_stop = true;
  const std::vector<Row> combined = run_job(small_model(), job);
  ASSERT_EQ(combined.size(), 16u);
  std::vector<std::vector<Row>> alone;
  for (float e : job.eps) {
    OptimizeJob one = job;
    one.eps = {e};
    alone.push_back(run_job(small_model(), one));
  }
  // The CPU backend runs every image through its own BLAS calls, so an entry's result does not depend on what shares
  // its batch: the combined job must pick exactly the row the rule picks among the runs alone, bit for bit.
  std::vector<int> wins(job.eps.size(), 0);
  int step_decided = 0;
  std::vector<size_t> best(combined.size(), 0);
  for (size_t i = 0; i < combined.size(); ++i) {
    for (size_t e = 1; e < alone.size(); ++e)
      if (better_row(alone[e][i].r, alone[best[i]][i].r)) best[i] = e;
    ++wins[best[i]];
    for (const auto& a : alone)
      step_decided += a[i].r.success && alone[best[i]][i].r.success && a[i].r.success_step != alone[best[i]][i].r.success_step;
  }
  // More than one eps value must win somewhere, and some row must be decided by the success step.
  EXPECT_GE(std::count_if(wins.begin(), wins.end(), [](int w) { return w > 0; }), 2)
      << "wins " << wins[0] << "," << wins[1] << "," << wins[2];
  EXPECT_GT(step_decided, 0);

  auto check_choice = [&](const std::vector<Row>& rows, const std::string& what) {
    ASSERT_EQ(rows.size(), combined.size()) << what;
    for (size_t i = 0; i < rows.size(); ++i) {
      const RowResult& want = alone[best[i]][i].r;
      EXPECT_EQ(rows[i].r.row, static_cast<long>(i)) << what;
      EXPECT_EQ(rows[i].r.eps, job.eps[best[i]]) << what << ", row " << i;
      EXPECT_EQ(rows[i].r.restart, 0) << what << ", row " << i;
      EXPECT_EQ(rows[i].r.success_step, want.success_step) << what << ", row " << i;
      EXPECT_EQ(rows[i].r.updates, want.updates) << what << ", row " << i;
      EXPECT_EQ(rows[i].r.loss, want.loss) << what << ", row " << i;
      EXPECT_EQ(0, std::memcmp(rows[i].image.data(), alone[best[i]][i].image.data(), kD * sizeof(float)))
          << what << ", row " << i;
    }
  };
  check_choice(combined, "3 eps values");

  // Restarts without random starts are bit-identical copies of one entry: ties keep the first, restart 0.
  OptimizeJob copies = job;
  copies.restarts = 3;
  EngineStats stats;
  const std::vector<Row> c = run_job(small_model(), copies, nullptr, &stats);
  EXPECT_EQ(stats.entries_per_row, 9);
  EXPECT_EQ(stats.entries, 16 * 9);
  check_choice(c, "3 eps values x 3 copies");

  // With random starts the restarts differ, and the winner is reported with its own restart index.
  OptimizeJob restarts = copies;
  restarts.random_start = true;
  const std::vector<Row> r = run_job(small_model(), restarts);
  ASSERT_EQ(r.size(), 16u);
  std::vector<int> restart_wins(3, 0);
  for (size_t i = 0; i < r.size(); ++i) {
    ASSERT_GE(r[i].r.restart, 0);
    ASSERT_LT(r[i].r.restart, 3);
    ++restart_wins[r[i].r.restart];
  }
  EXPECT_LT(restart_wins[0], 16) << "restart 0 won every row: the restart index is not reported";
}

TEST(OptimizeEngine, OtherGivesNineRowsPerImage) {
  const Dataset data = fake_dataset(4, [](int i) { return (3 * i + 1) % kK; });
  OptimizeJob job;
  job.init = InitKind::Test;
  job.indices = {2, 0, 3};
  job.target = "other";
  job.steps = 2;
  EngineStats stats;
  const std::vector<Row> rows = run_job(small_model(), job, &data, &stats);
  ASSERT_EQ(rows.size(), 27u);
  EXPECT_EQ(stats.rows, 27);
  for (size_t s = 0; s < 3; ++s) {
    const int index = job.indices[s], label = data.labels[index];
    std::vector<int> targets;
    for (size_t t = 0; t < 9; ++t) {
      const Row& row = rows[s * 9 + t];
      EXPECT_EQ(row.r.row, static_cast<long>(s * 9 + t));
      EXPECT_EQ(row.r.source, static_cast<long>(s));
      EXPECT_EQ(row.r.dataset_index, index);
      EXPECT_EQ(row.r.source_name, "test:" + std::to_string(index));
      EXPECT_EQ(row.r.label, label);
      EXPECT_EQ(row.r.target.kind, TargetKind::OneHot);
      targets.push_back(row.r.target.cls);
    }
    std::vector<int> expect;
    for (int c = 0; c < kK; ++c)
      if (c != label) expect.push_back(c);
    EXPECT_EQ(targets, expect) << "image " << index;
  }
}

TEST(OptimizeEngine, NextTargetsLabelPlusOne) {
  const Dataset data = fake_dataset(12, [](int i) { return (i * 7) % kK; });
  OptimizeJob job;
  job.init = InitKind::Test;
  job.count = 12;
  job.target = "next";
  job.steps = 1;
  const std::vector<Row> rows = run_job(small_model(), job, &data);
  ASSERT_EQ(rows.size(), 12u);
  for (const Row& row : rows) {
    EXPECT_EQ(row.r.target.kind, TargetKind::OneHot);
    EXPECT_EQ(row.r.target.cls, (row.r.label + 1) % kK);
    EXPECT_EQ(row.r.label, (row.r.dataset_index * 7) % kK);
  }
  EXPECT_EQ(rows[9].r.target.cls, 4);  // label 3 -> 4
  EXPECT_EQ(rows[7].r.target.cls, 0);  // label 9 wraps to 0
}

TEST(OptimizeEngine, UntargetedSuccessMeansArgmaxLeavesTheLabel) {
  // Label each image with the model's own verdict, so no start is already a success.
  const Model& model = small_model();
  auto backend = make_cpu_backend();
  backend->load_model(model);
  constexpr int kCount = 24;
  Dataset data = fake_dataset(kCount, [](int) { return 0; });
  std::vector<float> x(static_cast<size_t>(kCount) * kD), probs(static_cast<size_t>(kCount) * kK);
  for (int i = 0; i < kCount; ++i) data.image_as_float(i, x.data() + static_cast<size_t>(i) * kD);
  backend->predict(x.data(), kCount, probs.data());
  for (int i = 0; i < kCount; ++i) {
    const float* p = probs.data() + static_cast<size_t>(i) * kK;
    data.labels[i] = static_cast<uint8_t>(std::max_element(p, p + kK) - p);
  }
  OptimizeJob job;
  job.init = InitKind::Test;
  job.count = kCount;
  job.target = "untargeted";
  job.steps = 2;
  job.step.lr = 0.01f;
  const std::vector<Row> rows = run_job(model, job, &data);
  ASSERT_EQ(rows.size(), static_cast<size_t>(kCount));
  int successes = 0;
  for (const Row& row : rows) {
    EXPECT_EQ(row.r.target.kind, TargetKind::Untargeted);
    EXPECT_EQ(row.r.target.cls, row.r.label);
    EXPECT_EQ(row.r.start_class, row.r.label);
    EXPECT_EQ(row.r.success, argmax(row.r.probs) != row.r.label) << row.r.source_name;
    if (row.r.success) {
      EXPECT_GT(row.r.success_step, 0);
    }
    successes += row.r.success;
  }
  EXPECT_GT(successes, 0);
  EXPECT_LT(successes, kCount) << "all succeeded: the failure side of the rule went unchecked";
}

TEST(OptimizeEngine, ReferenceModelReachesEveryTarget) {
  OptimizeJob job = noise_job(20, 10);
  job.step.stop_prob = 0.9f;
  job.step.early_stop = true;
  const std::vector<Row> rows = run_job(reference_model(), job);
  ASSERT_EQ(rows.size(), 20u);
  for (const Row& row : rows) {
    EXPECT_EQ(row.r.target.cls, row.r.source % kK);
    EXPECT_TRUE(row.r.success) << row.r.source_name;
    EXPECT_GE(row.r.probs[row.r.target.cls], 0.9f) << row.r.source_name;
    EXPECT_LE(row.r.success_step, 10);
    EXPECT_EQ(row.r.updates, row.r.success_step);
    EXPECT_EQ(argmax(row.r.probs), row.r.target.cls);
  }
}

}  // namespace
}  // namespace nudge
