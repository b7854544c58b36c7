// The CUDA backend's optimize chunks against the CPU backend's on a fixed job, on both GPU paths (the fused kernel
// and layer by layer), each selected explicitly and checked to be the one that ran: the same success set (success
// steps within rounding drift), the whole budget without early stop, the start classes a chunk reports, and the
// engine with overlapping chunks against one chunk. OptimizeFixture checks, without a GPU, that the fixed job keeps
// enough clear successes and failures once its borderline entries are left out.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "backend.h"
#include "cpu_backend.h"
#include "cuda_parity_fixture.h"
#include "cuda_test_util.h"
#include "model.h"
#include "optimize_engine.h"
#include "optimize_math.h"
#include "start_images.h"

#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#endif

namespace nudge {

// gtest names a parameter with this in test listings ("GetParam() = fused"). Outside the anonymous namespace, so
// that argument-dependent lookup finds it.
inline void PrintTo(OptimizePath p, std::ostream* os) {
  *os << (p == OptimizePath::Fused ? "fused" : p == OptimizePath::Layers ? "layers" : "auto");
}

namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::CudaBackendParity;
using test::test_model;

// ---- optimize chunks: a fixed job ----------------------------------------------------------------------------------

// A fixed job (fixed seeds, so its outcome is known): noise images x {one-hot, untargeted, soft} targets x
// {eps 0.3, eps 0.01} under L-inf, Adam, early stop. Entries whose CPU outcome is borderline (a success within 8
// steps of the budget, or a failure within 0.05 of its goal) are left out, as inputs near ReLU kinks are: there a
// rounding difference legitimately flips the outcome. What remains must come out the same on the GPU.
struct FixedJob {
  Model model;
  StepConfig cfg;
  int steps = 70, n = 0;
  std::vector<float> start, dist, eps;
  std::vector<int32_t> kind, cls;
  ChunkInput input() const {
    ChunkInput in;
    in.n = n;
    in.start = start.data();
    in.target_dist = dist.data();
    in.target_kind = kind.data();
    in.target_class = cls.data();
    in.eps = eps.data();
    return in;
  }
  void add(const FixedJob& from, int i) {
    const size_t D = model.arch.input.size(), K = model.arch.num_classes();
    start.insert(start.end(), from.start.begin() + i * D, from.start.begin() + (i + 1) * D);
    dist.insert(dist.end(), from.dist.begin() + i * K, from.dist.begin() + (i + 1) * K);
    eps.push_back(from.eps[i]);
    kind.push_back(from.kind[i]);
    cls.push_back(from.cls[i]);
    ++n;
  }
};

// `path`, when given, receives the implementation the chunk ran (OptimizeChunk::path).
ChunkResult run_job(Backend& b, const FixedJob& j, std::string* path = nullptr) {
  b.load_model(j.model);
  auto chunk = b.begin_optimize(j.input(), j.cfg);
  if (path) *path = chunk->path();
  for (int s = 0; s < j.steps && chunk->active_count() > 0; ++s) chunk->step();
  return chunk->finish();
}

// How far entry i's best iterate is from its goal, in the goal's own units (negative: met).
double goal_gap(const FixedJob& j, const ChunkResult& r, int i) {
  const int K = j.model.arch.num_classes();
  const float* p = r.best_probs.data() + static_cast<size_t>(i) * K;
  switch (static_cast<TargetKind>(j.kind[i])) {
    case TargetKind::OneHot: return j.cfg.stop_prob - p[j.cls[i]];
    case TargetKind::Untargeted: {
      // Met when another class is on top and p[label] <= 1 - stop_prob: the gap is the larger shortfall.
      float other = 0;
      for (int k = 0; k < K; ++k)
        if (k != j.cls[i]) other = std::max(other, p[k]);
      return std::max(p[j.cls[i]] - (1.0 - j.cfg.stop_prob), static_cast<double>(p[j.cls[i]] - other));
    }
    case TargetKind::Soft: return kl_divergence(j.dist.data() + static_cast<size_t>(i) * K, p, K) - j.cfg.stop_kl;
  }
  return 0;
}

const FixedJob& fixed_job() {
  static const FixedJob job = [] {
    FixedJob all;
    all.model = test_model(20240611);
    // Glorot's logits barely depend on the input; scaling every weight by 1.6 makes them ~10x steeper (five
    // positively homogeneous layers), so targets become reachable within the budget.
    const auto specs = all.model.arch.params();
    for (size_t i = 0; i < specs.size(); ++i)
      if (!specs[i].is_bias)
        for (float& w : all.model.params[i].data) w *= 1.6f;
    all.cfg.loss = LossKind::CrossEntropy;
    all.cfg.optimizer = InputOptimizer::Adam;
    all.cfg.lr = 0.02f;
    all.cfg.early_stop = true;
    all.cfg.stop_prob = 0.8f;
    all.cfg.stop_kl = 0.05f;
    all.cfg.norm = Norm::Linf;
    const int D = all.model.arch.input.size(), K = all.model.arch.num_classes(), sources = 16;
    auto cpu = make_cpu_backend();
    cpu->load_model(all.model);
    std::vector<float> img(D), probs(K);
    for (int s = 0; s < sources; ++s) {
      noise_image(5, s, D, img.data());
      cpu->predict(img.data(), 1, probs.data());
      const int pred = static_cast<int>(std::max_element(probs.begin(), probs.end()) - probs.begin());
      for (int kind = 0; kind < 3; ++kind)
        for (float eps : {0.3f, 0.01f}) {
          all.start.insert(all.start.end(), img.begin(), img.end());
          std::vector<float> t(K, 0.0f);
          int cls = pred;
          if (kind == static_cast<int>(TargetKind::OneHot)) {
            cls = (pred + 1 + s % (K - 1)) % K;
            t[cls] = 1.0f;
          } else if (kind == static_cast<int>(TargetKind::Soft)) {
            // The start's own distribution pulled towards another class: reachable, but not at step 0.
            cls = (pred + 3) % K;
            for (int k = 0; k < K; ++k) t[k] = 0.75f * probs[k] + (k == cls ? 0.25f : 0.0f);
          }
          all.dist.insert(all.dist.end(), t.begin(), t.end());
          all.kind.push_back(kind);
          all.cls.push_back(cls);
          all.eps.push_back(eps);
          ++all.n;
        }
    }
    const ChunkResult r = run_job(*cpu, all);
    FixedJob kept;
    kept.model = all.model;
    kept.cfg = all.cfg;
    kept.steps = all.steps;
    for (int i = 0; i < all.n; ++i) {
      const bool clear = r.success_step[i] >= 0 ? r.success_step[i] <= all.steps - 8 : goal_gap(all, r, i) > 0.05;
      if (clear) kept.add(all, i);
    }
    return kept;
  }();
  return job;
}

// Runs without a GPU: the fixed job must keep enough of both outcomes after the borderline entries are dropped.
TEST(OptimizeFixture, HasClearSuccessesAndFailures) {
  const FixedJob& j = fixed_job();
  auto cpu = make_cpu_backend();
  const ChunkResult r = run_job(*cpu, j);
  int successes = 0;
  for (int i = 0; i < j.n; ++i) successes += r.success_step[i] >= 0;
  std::printf("[   INFO   ] fixed job: %d entries kept of 96, %d succeed on the CPU\n", j.n, successes);
  EXPECT_GE(j.n, 80) << "too many borderline entries: change the job";
  EXPECT_GE(successes, 20);
  EXPECT_GE(j.n - successes, 20);
}

// The optimize parity tests run on both GPU paths, each selected explicitly (Auto would take the fused kernel on the
// reference architecture and leave the layer-by-layer chunk, the only GPU path of every other architecture,
// unchecked). Each test also checks that the path it asked for is the one that ran.
class CudaOptimizeParity : public CudaBackendParity, public ::testing::WithParamInterface<OptimizePath> {
 protected:
  // The job on the path under test (StepConfig::path).
  FixedJob on_path(FixedJob j) const {
    j.cfg.path = GetParam();
    return j;
  }
  std::string path_name() const { return GetParam() == OptimizePath::Fused ? "fused" : "layers"; }
};

std::string path_param_name(const ::testing::TestParamInfo<OptimizePath>& info) {
  return info.param == OptimizePath::Fused ? "Fused" : "Layers";
}

TEST_P(CudaOptimizeParity, ChunkSameSuccessSet) {
  const FixedJob j = on_path(fixed_job());
  std::string ran;
  const ChunkResult rc = run_job(*cpu_, j), rg = run_job(*gpu_, j, &ran);
  EXPECT_EQ(ran, path_name());
  ASSERT_EQ(rg.success_step.size(), rc.success_step.size());
  int moved = 0;
  double worst_prob = 0;
  for (int i = 0; i < j.n; ++i) {
    SCOPED_TRACE("entry " + std::to_string(i));
    EXPECT_EQ(rg.success_step[i] >= 0, rc.success_step[i] >= 0) << "cpu step " << rc.success_step[i] << ", gpu "
                                                                 << rg.success_step[i];
    if (rg.success_step[i] >= 0 && rc.success_step[i] >= 0) {
      // Trajectories drift apart by rounding; a slow climb crosses the goal a little earlier or later.
      EXPECT_LE(std::abs(rg.success_step[i] - rc.success_step[i]), std::max(2, rc.success_step[i] / 10));
      moved += rg.success_step[i] != rc.success_step[i];
    }
    // Early stop: an entry's updates are its success step, or the whole budget.
    EXPECT_EQ(rg.updates[i], rg.success_step[i] >= 0 ? rg.success_step[i] : j.steps);
    const int K = j.model.arch.num_classes();
    for (int k = 0; k < K; ++k)
      worst_prob = std::max(worst_prob, std::fabs(static_cast<double>(rg.best_probs[i * K + k]) - rc.best_probs[i * K + k]));
  }
  std::printf("[   INFO   ] %s: success steps differ for %d of %d entries; max best-probability difference %.3g\n",
              path_name().c_str(), moved, j.n, worst_prob);
  EXPECT_LE(moved, j.n / 8);
}

// Without early stopping every entry takes the whole budget, and no step synchronizes with the host.
TEST_P(CudaOptimizeParity, ChunkWithoutEarlyStop) {
  FixedJob j = on_path(fixed_job());
  j.cfg.early_stop = false;
  j.cfg.norm = Norm::L2;
  for (float& e : j.eps) e *= 10.0f;
  j.steps = 10;
  std::string ran;
  const ChunkResult rc = run_job(*cpu_, j), rg = run_job(*gpu_, j, &ran);
  EXPECT_EQ(ran, path_name());
  EXPECT_TRUE(all_equal("updates", rg.updates, rc.updates));
  for (int i = 0; i < j.n; ++i) {
    EXPECT_EQ(rg.updates[i], j.steps) << "entry " << i;
    // Ten Adam steps from the same start keep the iterates close; where both met the goal at the same step (or
    // never), their best iterates are the same step's and their losses agree closely.
    if (rg.success_step[i] == rc.success_step[i]) {
      EXPECT_NEAR(rg.best_loss[i], rc.best_loss[i], 1e-3 + 1e-2 * std::fabs(rc.best_loss[i])) << "entry " << i;
    }
  }
}

// A chunk without random starts reports each entry's class at its first evaluation (ChunkResult::start_class), which
// the engine takes instead of a predict pass: it must be the model's argmax on the start image (the CPU's, except
// where the CPU's top two probabilities are within 1e-4, the probabilities' tolerance). With random starts (init)
// the first iterate is not the start image and nothing is reported.
TEST_P(CudaOptimizeParity, ChunkReportsStartClasses) {
  const FixedJob j = on_path(fixed_job());
  gpu_->load_model(j.model);
  cpu_->load_model(j.model);
  std::vector<float> probs(static_cast<size_t>(j.n) * K_);
  cpu_->predict(j.start.data(), j.n, probs.data());
  auto chunk = gpu_->begin_optimize(j.input(), j.cfg);
  EXPECT_EQ(chunk->path(), path_name());
  for (int s = 0; s < 3; ++s) chunk->step();
  const ChunkResult r = chunk->finish();
  ASSERT_EQ(r.start_class.size(), static_cast<size_t>(j.n));
  int compared = 0;
  for (int i = 0; i < j.n; ++i) {
    const float* q = probs.data() + static_cast<size_t>(i) * K_;
    const int top = static_cast<int>(std::max_element(q, q + K_) - q);
    bool tie = false;
    for (int k = 0; k < K_; ++k) tie |= k != top && q[top] - q[k] < 1e-4f;
    if (tie) continue;
    ++compared;
    EXPECT_EQ(r.start_class[i], top) << "entry " << i;
  }
  EXPECT_GE(compared, j.n * 3 / 4);

  ChunkInput with_init = j.input();
  with_init.init = j.start.data();
  auto c2 = gpu_->begin_optimize(with_init, j.cfg);
  EXPECT_TRUE(c2->finish().start_class.empty()) << "a random start is not the start image";
}

// The engine begins chunk k+1 (its upload queued on the copy stream) while chunk k still computes, so several chunk
// lifetimes overlap on the device. Run one job in small chunks and in one: the same rows in the same order and the
// same outcomes. The fused path computes each entry alone, so there everything must match exactly; layer by layer,
// cuDNN may pick another algorithm for another batch size, so probabilities agree to rounding and an entry whose
// goal is crossed by a hair may flip.
TEST_P(CudaOptimizeParity, EngineWithOverlappingChunksMatchesOneChunk) {
  struct Rows : RowSink {
    std::vector<long> index;
    std::vector<int> success_step;
    std::vector<float> probs, images;
    void row(const RowResult& r) override {
      index.push_back(r.row);
      success_step.push_back(r.success_step);
      probs.insert(probs.end(), r.probs.begin(), r.probs.end());
      images.insert(images.end(), r.image, r.image + 784);
    }
  };
  OptimizeJob job;
  job.count = 40;
  job.target = "all";  // 400 rows
  job.steps = 6;
  job.step.early_stop = true;
  job.step.stop_prob = 0.9f;
  const StartImages starts(job, nullptr, 28, 28);
  const OptimizePath path = GetParam();
  job.step.path = path;
  {
    Rows small, whole;
    job.chunk = 48;  // 9 chunks
    EXPECT_EQ(run_optimize(*gpu_, model_, job, starts, small, false).path, path_name());
    job.chunk = 400;
    EXPECT_EQ(run_optimize(*gpu_, model_, job, starts, whole, false).path, path_name());
    ASSERT_EQ(small.index.size(), 400u);
    ASSERT_EQ(whole.index.size(), 400u);
    for (size_t i = 0; i < small.index.size(); ++i) ASSERT_EQ(small.index[i], static_cast<long>(i));
    if (path == OptimizePath::Fused) {
      EXPECT_TRUE(all_equal("success steps", small.success_step, whole.success_step));
      EXPECT_TRUE(all_equal("probabilities", small.probs, whole.probs));
      EXPECT_TRUE(all_equal("images", small.images, whole.images));
    } else {
      // Rows whose success step moved report another iterate; the others must agree to rounding.
      int moved = 0;
      std::vector<float> a, b;
      for (size_t i = 0; i < small.index.size(); ++i) {
        if (small.success_step[i] != whole.success_step[i]) {
          ++moved;
          continue;
        }
        a.insert(a.end(), small.probs.begin() + i * 10, small.probs.begin() + (i + 1) * 10);
        b.insert(b.end(), whole.probs.begin() + i * 10, whole.probs.begin() + (i + 1) * 10);
      }
      EXPECT_LE(moved, 8) << "of 400 rows";
      EXPECT_TRUE(all_close("probabilities of rows with the same success step", a, b, {2e-3, 0}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BothPaths, CudaOptimizeParity, ::testing::Values(OptimizePath::Fused, OptimizePath::Layers),
                         path_param_name);


#endif  // NUDGE_HAVE_CUDA

}  // namespace
}  // namespace nudge
