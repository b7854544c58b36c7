// The optimize engine on the CPU backend, checked through its contracts rather than its numbers:
//   - chunking is invisible: a job run in chunks of 7 or 64 entries gives bit-identical rows to the job run whole
//     (one-hot and soft targets, eps lists with restarts and random starts), and start images do not depend on the
//     chunk size or the OpenMP thread count;
//   - the chunk API: an entry that met its goal under early stop is frozen (image, probabilities, update count);
//     without early stop the success step is still recorded and the reported image is the first goal-meeting iterate;
//   - reported images stay in [0,1] and inside the eps-ball (L-inf and L2, with and without random starts);
//   - row expansion: eps values x restarts give one row per image with the best entry; "other" gives K-1 rows;
//     "next" targets label+1 mod K; untargeted success means argmax != label;
//   - validate_job refuses each malformed job with a message naming the rule.
// A tiny random model stands in where the weights do not matter; the committed reference model is used where
// success must actually happen.
#include "optimize_engine.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "counter_rng.h"
#include "cpu_backend.h"
#include "dataset.h"
#include "errors.h"
#include "optimize_math.h"
#include "model.h"
#include "optimize_job.h"
#include "start_images.h"

namespace nudge {
namespace {

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

const Model& small_model() {
  static const Model m = Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 7);
  return m;
}

const Model& reference_model() {
  static const Model m = Model::load(std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors");
  return m;
}

std::vector<Row> run_job(const Model& model, const OptimizeJob& job, const Dataset* data = nullptr,
                         EngineStats* stats_out = nullptr) {
  auto backend = make_cpu_backend();
  backend->load_model(model);
  const StartImages starts(job, data, model.arch.input.w, model.arch.input.h);
  CollectSink sink(model.arch.input.size());
  const EngineStats stats = run_optimize(*backend, model, job, starts, sink, false);
  if (stats_out) *stats_out = stats;
  return std::move(sink.rows);
}

int argmax(const std::vector<float>& p) { return static_cast<int>(std::max_element(p.begin(), p.end()) - p.begin()); }

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

OptimizeJob noise_job(long count, int steps) {
  OptimizeJob job;
  job.init = InitKind::Noise;
  job.count = count;
  job.target = "all";
  job.steps = steps;
  job.seed = 42;
  return job;
}

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

// ---- validation ---------------------------------------------------------------------------------------------------

void expect_invalid(const OptimizeJob& job, const std::string& needle) {
  try {
    validate_job(job, kK);
    ADD_FAILURE() << "validate_job accepted a job that should fail with '" << needle << "'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

TEST(ValidateJob, RejectsEachBadJob) {
  OptimizeJob ok = noise_job(3, 5);
  EXPECT_NO_THROW(validate_job(ok, kK));

  OptimizeJob soft = ok;
  soft.target = "";
  soft.target_dist = std::vector<float>(9, 1.0f / 9);
  expect_invalid(soft, "has 9 entries");
  soft.target_dist = {0.6f, 0.5f, -0.1f, 0, 0, 0, 0, 0, 0, 0};
  expect_invalid(soft, "entry 2 is negative");
  soft.target_dist = {0.5f, 0.4f, 0, 0, 0, 0, 0, 0, 0, 0};
  expect_invalid(soft, "must sum to 1");
  soft.target_dist = {0.5f, 0.5f, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_NO_THROW(validate_job(soft, kK));
  soft.step.loss = LossKind::CarliniWagner;
  expect_invalid(soft, "--loss cw needs a one-hot or untargeted target");

  OptimizeJob both = ok;
  both.target_dist = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  expect_invalid(both, "not both");

  OptimizeJob eps = ok;
  eps.step.norm = Norm::Linf;
  eps.eps = {0.1f, -0.1f};
  expect_invalid(eps, "--eps must be >= 0");
  eps.eps = {NAN};
  expect_invalid(eps, "--eps must be >= 0");

  OptimizeJob cls = ok;
  cls.target = "12";
  expect_invalid(cls, "the model has 10 classes");
  cls.target = "-1";
  expect_invalid(cls, "the model has 10 classes");
  cls.target = "3x";
  expect_invalid(cls, "expected a class number");

  for (const char* t : {"next", "other", "untargeted"}) {
    OptimizeJob unlabelled = ok;
    unlabelled.target = t;
    expect_invalid(unlabelled, "needs true labels");
    unlabelled.init = InitKind::Test;
    EXPECT_NO_THROW(validate_job(unlabelled, kK)) << t;
  }

  OptimizeJob none = ok;
  none.target = "";
  expect_invalid(none, "no target");
}

}  // namespace
}  // namespace nudge
