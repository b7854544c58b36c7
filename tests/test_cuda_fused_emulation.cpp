// The fused optimize kernel's block code run on the host (fused_optimize_emulate, kernels/fused/), driven as
// FusedChunk drives the device and checked against the CPU backend's optimize chunk on the committed reference
// model; no GPU needed, so a CUDA build checks the kernel's logic (indexing, phases, bookkeeping) even on a machine
// without one:
//   - one SGD step for every loss and norm, 7 entries in tiles of 3, 3 and 1 over 3 blocks;
//   - before the first update (finish() right away), every optimizer and loss from a start and a random init: a
//     pure forward pass and the loss, exact;
//   - each phase's threads in reverse order, tile 1 and 2 steps per launch leave every result bit-identical
//     (reversing the threads exposes any two threads of a phase that touch the same data);
//   - early stop: entries met at the start stop with 0 updates, the rest match the CPU;
//   - each entry's class at its first evaluation (FusedParams::start_class), whatever comes later in a launch;
// and which architectures the fused path takes (the reference one only). Tolerances: the file comment of
// tests/test_cuda_fused_device.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "architecture.h"
#include "cpu_backend.h"
#include "cuda_test_util.h"
#include "fused_jobs.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "fused_chunk.h"
#include "fused_optimize.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::EmulationOptions;
using test::expect_identical;
using test::expect_matches_cpu;
using test::Job;
using test::kDecisionMargin;
using test::kK;
using test::make_job;
using test::NamedConfig;
using test::one_step_configs;
using test::reference_model;
using test::run_cpu;
using test::run_emulated;
using test::step_config;
using test::Targets;

// ---- no device needed ---------------------------------------------------------------------------------------------

TEST(FusedPath, SupportsTheReferenceArchitectureOnly) {
  EXPECT_TRUE(cuda::fused_path_supports(Architecture::reference()));
  EXPECT_TRUE(cuda::fused_path_supports(reference_model().arch));
  EXPECT_FALSE(cuda::fused_path_supports(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10")));
  EXPECT_FALSE(cuda::fused_path_supports(Architecture::parse(
      "1x28x28:conv24k3,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense11")));
  EXPECT_LE(cuda::fused_smem_bytes(), size_t{227} * 1024);
}

TEST(FusedEmulation, OneStepMatchesCpu) {
  const Job job = make_job(7, 101, Targets::Mixed, 0.0f);
  for (const NamedConfig& c : one_step_configs()) {
    Job j = job;
    j.eps.assign(j.n, c.eps);
    const ChunkResult cpu = run_cpu(j, c.cfg, 1);
    EmulationOptions opt;
    opt.tile = 3;  // 7 entries: tiles of 3, 3 and 1 over 3 blocks
    expect_matches_cpu(run_emulated(j, c.cfg, 1, opt), cpu, 2e-5, std::string("emulated ") + c.name);
  }
}

TEST(FusedEmulation, EveryOptimizerAndRandomStartMatchCpuBeforeTheFirstUpdate) {
  // finish() right away evaluates the start (or init) iterate only: a pure forward pass and the loss.
  Job job = make_job(5, 102, Targets::Mixed, 0.1f);
  job.init = job.start;
  for (size_t i = 0; i < job.init.size(); ++i)
    job.init[i] = std::min(1.0f, std::max(0.0f, job.init[i] + (i % 7 == 0 ? 0.05f : -0.02f)));
  for (InputOptimizer o : {InputOptimizer::Adam, InputOptimizer::Sign})
    for (LossKind l : {LossKind::CrossEntropy, LossKind::KL, LossKind::CarliniWagner}) {
      const StepConfig cfg = step_config(l, o, Norm::Linf, 0.01f, false);
      expect_matches_cpu(run_emulated(job, cfg, 0, {}), run_cpu(job, cfg, 0), 0.0,
                         std::string("emulated start ") + to_string(o) + "/" + to_string(l));
    }
}

TEST(FusedEmulation, ThreadOrderTileSizeAndStepsPerLaunchChangeNothing) {
  const Job job = make_job(11, 103, Targets::Mixed, 2.0f);
  const StepConfig cfg = step_config(LossKind::CrossEntropy, InputOptimizer::Adam, Norm::L2, 0.02f, true);
  EmulationOptions base;
  base.tile = 8;
  const ChunkResult ref = run_emulated(job, cfg, 3, base);
  EmulationOptions reversed = base;
  reversed.reverse_threads = true;
  expect_identical(run_emulated(job, cfg, 3, reversed), ref, "reverse thread order");
  EmulationOptions small = base;
  small.tile = 1;
  small.blocks = 2;
  small.steps_per_launch = 2;
  expect_identical(run_emulated(job, cfg, 3, small), ref, "tile 1, 2 steps per launch");
}

TEST(FusedEmulation, EarlyStopMatchesCpu) {
  // Entries 0..3 are met at the start (target = predicted class) and must stop with 0 updates; the rest move.
  Job job = make_job(9, 104, Targets::Mixed, 0.0f);
  const Job met = make_job(4, 104, Targets::StartClass, 0.0f);
  for (int i = 0; i < 4; ++i) {
    job.kind[i] = met.kind[i];
    job.cls[i] = met.cls[i];
    std::copy_n(met.dist.data() + i * kK, kK, job.dist.data() + i * kK);
  }
  const StepConfig cfg = step_config(LossKind::CrossEntropy, InputOptimizer::Sgd, Norm::None, 0.05f, true);
  const ChunkResult cpu = run_cpu(job, cfg, 2);
  EmulationOptions opt;
  opt.tile = 4;
  const ChunkResult emu = run_emulated(job, cfg, 2, opt);
  expect_matches_cpu(emu, cpu, 5e-5, "emulated early stop");
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(emu.success_step[i], 0) << i;
    EXPECT_EQ(emu.updates[i], 0) << i;
  }
}

// The start classes (FusedParams::start_class) come from each entry's first evaluation and nothing later: the CPU
// backend's argmax on the start images, wherever that argmax is not within rounding of a tie (the emulation sums
// in another order than the CPU backend).
std::vector<int32_t> cpu_start_classes(const Job& job, std::vector<bool>* near_tie) {
  auto cpu = make_cpu_backend();
  cpu->load_model(reference_model());
  std::vector<float> probs(static_cast<size_t>(job.n) * kK);
  cpu->predict(job.start.data(), job.n, probs.data());
  std::vector<int32_t> cls(job.n);
  near_tie->assign(job.n, false);
  for (int i = 0; i < job.n; ++i) {
    const float* q = probs.data() + static_cast<size_t>(i) * kK;
    cls[i] = static_cast<int32_t>(std::max_element(q, q + kK) - q);
    for (int k = 0; k < kK; ++k)
      if (k != cls[i] && q[cls[i]] - q[k] < kDecisionMargin) (*near_tie)[i] = true;
  }
  return cls;
}

TEST(FusedEmulation, ReportsEachEntrysClassAtItsFirstEvaluation) {
  const Job job = make_job(11, 105, Targets::Mixed, 0.3f);
  std::vector<bool> near_tie;
  const std::vector<int32_t> expect = cpu_start_classes(job, &near_tie);
  for (bool early_stop : {false, true}) {
    SCOPED_TRACE(early_stop ? "early stop" : "no early stop");
    const StepConfig cfg = step_config(LossKind::CrossEntropy, InputOptimizer::Adam, Norm::Linf, 0.05f, early_stop);
    std::vector<int32_t> got;
    EmulationOptions opt;
    opt.tile = 4;
    opt.steps_per_launch = 3;  // later steps of the same launch must not overwrite it
    opt.start_class = &got;
    run_emulated(job, cfg, 6, opt);
    ASSERT_EQ(got.size(), expect.size());
    for (int i = 0; i < job.n; ++i) {
      if (near_tie[i]) continue;
      EXPECT_EQ(got[i], expect[i]) << "entry " << i;
    }
  }
}

#else  // !NUDGE_HAVE_CUDA

TEST(FusedPath, SupportsTheReferenceArchitectureOnly) { NUDGE_GPU_SKIP("built without CUDA"); }
TEST(FusedEmulation, OneStepMatchesCpu) { NUDGE_GPU_SKIP("built without CUDA"); }
TEST(FusedEmulation, EveryOptimizerAndRandomStartMatchCpuBeforeTheFirstUpdate) { NUDGE_GPU_SKIP("built without CUDA"); }
TEST(FusedEmulation, ThreadOrderTileSizeAndStepsPerLaunchChangeNothing) { NUDGE_GPU_SKIP("built without CUDA"); }
TEST(FusedEmulation, EarlyStopMatchesCpu) { NUDGE_GPU_SKIP("built without CUDA"); }
TEST(FusedEmulation, ReportsEachEntrysClassAtItsFirstEvaluation) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
