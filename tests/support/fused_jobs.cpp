#include "fused_jobs.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "cpu_backend.h"
#include "optimize_math.h"
#include "start_images.h"

#if NUDGE_HAVE_CUDA
#include "chunk_params.h"
#endif

namespace nudge::test {

#if NUDGE_HAVE_CUDA

const Model& reference_model() {
  static const Model m = Model::load(std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors");
  return m;
}

Job make_job(int n, uint64_t seed, Targets targets, float eps) {
  Job j;
  j.n = n;
  j.start.resize(static_cast<size_t>(n) * kD);
  for (int i = 0; i < n; ++i) noise_image(seed, i, kD, j.start.data() + static_cast<size_t>(i) * kD);
  std::vector<float> probs(static_cast<size_t>(n) * kK);
  auto cpu = make_cpu_backend();
  cpu->load_model(reference_model());
  cpu->predict(j.start.data(), n, probs.data());
  j.dist.assign(static_cast<size_t>(n) * kK, 0.0f);
  j.kind.resize(n);
  j.cls.resize(n);
  j.eps.assign(n, eps);
  for (int i = 0; i < n; ++i) {
    const float* p = probs.data() + static_cast<size_t>(i) * kK;
    const int pred = static_cast<int>(std::max_element(p, p + kK) - p);
    float* d = j.dist.data() + static_cast<size_t>(i) * kK;
    const int mode = targets == Targets::Mixed ? i % 3 : 0;
    if (targets == Targets::StartClass) {
      j.kind[i] = static_cast<int32_t>(TargetKind::OneHot);
      j.cls[i] = pred;
      d[pred] = 1.0f;
    } else if (mode == 0) {
      const int c = (pred + 1 + i % 9) % kK;
      j.kind[i] = static_cast<int32_t>(TargetKind::OneHot);
      j.cls[i] = c;
      d[c] = 1.0f;
    } else if (mode == 1) {
      j.kind[i] = static_cast<int32_t>(TargetKind::Untargeted);
      j.cls[i] = pred;
    } else {
      j.kind[i] = static_cast<int32_t>(TargetKind::Soft);
      j.cls[i] = 0;
      d[(pred + 1) % kK] = 0.6f;
      d[(pred + 2) % kK] = 0.4f;
    }
  }
  return j;
}

StepConfig step_config(LossKind loss, InputOptimizer opt, Norm norm, float lr, bool early_stop) {
  StepConfig c;
  c.loss = loss;
  c.optimizer = opt;
  c.norm = norm;
  c.lr = lr;
  c.early_stop = early_stop;
  c.cw_kappa = 0.5f;
  return c;
}

ChunkResult drive(OptimizeChunk& chunk, int steps) {
  for (int s = 0; s < steps && chunk.active_count() > 0; ++s) chunk.step();
  return chunk.finish();
}

ChunkResult run_cpu(const Job& job, const StepConfig& cfg, int steps) {
  auto cpu = make_cpu_backend();
  cpu->load_model(reference_model());
  auto chunk = cpu->begin_optimize(job.input(), cfg);
  return drive(*chunk, steps);
}

ChunkResult run_emulated(const Job& job, const StepConfig& cfg, int steps, const EmulationOptions& opt) {
  const Model& model = reference_model();
  cuda::FusedWeightSources src;
  for (int i = 0; i < cuda::kFusedParamTensors; ++i) src.tensor[i] = model.params[i].ptr();
  std::vector<float> packed(cuda::fused_packed_weight_count());
  cuda::fused_pack_weights_host(src, packed.data());

  const int n = job.n;
  const size_t nd = static_cast<size_t>(n) * kD;
  std::vector<float> x = job.init.empty() ? job.start : job.init, m(nd, 0.0f), v(nd, 0.0f);
  std::vector<float> best_loss(n, INFINITY), best_probs(static_cast<size_t>(n) * kK, 0.0f), best_images = x;
  std::vector<int32_t> steps_done(n, 0), success(n, -1), rows(n);
  std::vector<uint8_t> goal(n, 0), keep(n, 0);
  for (int i = 0; i < n; ++i) rows[i] = i;
  int count = n;
  if (opt.start_class) opt.start_class->assign(n, -1);

  auto launch = [&](int k, bool final_eval) {
    if (count == 0 || (k == 0 && !final_eval)) return;
    cuda::ChunkArrays arrays;
    arrays.x = x.data();
    arrays.x0 = job.start.data();
    arrays.m = m.data();
    arrays.v = v.data();
    arrays.target_dist = job.dist.data();
    arrays.target_kind = job.kind.data();
    arrays.target_class = job.cls.data();
    arrays.eps = job.eps.data();
    arrays.steps_done = steps_done.data();
    arrays.goal_reached = goal.data();
    arrays.best_loss = best_loss.data();
    arrays.best_probs = best_probs.data();
    arrays.best_images = best_images.data();
    arrays.success_step = success.data();
    arrays.start_class = opt.start_class ? opt.start_class->data() : nullptr;
    // The chunks' own parameter builder, so the emulation runs what the GPU chunk would launch.
    cuda::FusedParams p = cuda::fused_params(arrays, cfg, packed.data());
    p.rows = rows.data();
    p.count = count;
    p.tile = opt.tile;
    p.steps = k;
    p.final_eval = final_eval;
    const bool compact = cfg.early_stop && k > 0 && !final_eval;
    p.keep = compact ? keep.data() : nullptr;
    cuda::fused_optimize_emulate(p, opt.blocks, opt.reverse_threads);
    if (!compact) return;
    int kept = 0;
    for (int r = 0; r < count; ++r)
      if (keep[r]) rows[kept++] = rows[r];
    count = kept;
  };
  int pending = 0;
  for (int s = 0; s < steps && count > 0; ++s)
    if (++pending >= opt.steps_per_launch) {
      launch(pending, false);
      pending = 0;
    }
  launch(pending, true);

  ChunkResult r;
  r.best_images = best_images;
  r.best_probs = best_probs;
  r.best_loss = best_loss;
  r.success_step = success;
  r.updates = steps_done;
  return r;
}

bool print_errors() {
  const char* v = std::getenv("NUDGE_PRINT_ERRORS");
  return v && *v && std::strcmp(v, "0") != 0;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double rtol, double atol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double max_abs = 0, max_rel = 0;
  size_t bad = 0, worst = 0;
  std::string first;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    const double err = std::isnan(g) || std::isnan(r) ? INFINITY : std::fabs(g - r);
    if (err > max_abs) {
      max_abs = err;
      worst = i;
    }
    if (r != 0) max_rel = std::max(max_rel, err / std::fabs(r));
    if (!(err <= atol + rtol * std::fabs(r)) && bad++ < 5)
      first += "\n    [" + std::to_string(i) + "] got " + std::to_string(g) + " ref " + std::to_string(r);
  }
  if (bad)
    ADD_FAILURE() << what << ": " << bad << " of " << ref.size() << " elements beyond atol " << atol << " + rtol "
                  << rtol << "; max abs err " << max_abs << " at " << worst << ", max rel err " << max_rel
                  << "; first:" << first;
  else if (print_errors())
    std::printf("[  ERRORS  ] %s: max abs %.3g, max rel %.3g\n", what.c_str(), max_abs, max_rel);
}

void expect_matches_cpu(const ChunkResult& got, const ChunkResult& cpu, double image_atol, const std::string& what,
                        const std::vector<bool>* skip) {
  expect_close(got.best_probs, cpu.best_probs, 1e-4, 1e-9, what + " best_probs");
  expect_close(got.best_loss, cpu.best_loss, 1e-4, 1e-5, what + " best_loss");
  expect_close(got.best_images, cpu.best_images, 0.0, image_atol, what + " best_images");
  if (!skip) {
    expect_equal(got.success_step, cpu.success_step, what + " success_step");
    expect_equal(got.updates, cpu.updates, what + " updates");
    return;
  }
  std::vector<int32_t> gs, cs, gu, cu;
  int left_out = 0;
  for (size_t i = 0; i < cpu.success_step.size(); ++i) {
    if ((*skip)[i]) {
      ++left_out;
      continue;
    }
    gs.push_back(got.success_step[i]);
    cs.push_back(cpu.success_step[i]);
    gu.push_back(got.updates[i]);
    cu.push_back(cpu.updates[i]);
  }
  std::printf("[   INFO   ] %s: %d of %zu entries borderline (goal margin < %g), left out of the count comparison\n",
              what.c_str(), left_out, cpu.success_step.size(), kDecisionMargin);
  EXPECT_LE(left_out, static_cast<int>(cpu.success_step.size()) / 4) << what << ": too many borderline entries";
  expect_equal(gs, cs, what + " success_step (clear entries)");
  expect_equal(gu, cu, what + " updates (clear entries)");
}

void expect_identical(const ChunkResult& a, const ChunkResult& b, const std::string& what) {
  expect_equal(a.best_images, b.best_images, what + " best_images");
  expect_equal(a.best_probs, b.best_probs, what + " best_probs");
  expect_equal(a.best_loss, b.best_loss, what + " best_loss");
  expect_equal(a.success_step, b.success_step, what + " success_step");
  expect_equal(a.updates, b.updates, what + " updates");
}

std::vector<NamedConfig> one_step_configs() {
  return {
      {"ce/sgd/none", step_config(LossKind::CrossEntropy, InputOptimizer::Sgd, Norm::None, 0.05f, false), 0.0f},
      {"kl/sgd/linf", step_config(LossKind::KL, InputOptimizer::Sgd, Norm::Linf, 0.05f, false), 0.03f},
      {"cw/sgd/l2", step_config(LossKind::CarliniWagner, InputOptimizer::Sgd, Norm::L2, 0.05f, false), 0.5f},
      {"ce/sgd/l2-early", step_config(LossKind::CrossEntropy, InputOptimizer::Sgd, Norm::L2, 0.05f, true), 3.0f},
  };
}

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
