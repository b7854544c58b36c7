// The device-resident attack runs on the GPU against the CPU backend's, on the robust model's first 200 test points,
// every adversarial example of the GPU re-checked by a fresh forward pass (in the ball, in [0, 1], misclassified):
// - APGD-CE (host/cuda/cuda_apgd.cpp through Backend::begin_apgd), L-inf at 0.3 and L2 at 2.0, against the CPU's
//   host device (host/attack/apgd_host_device.cpp);
// - Square (host/cuda/cuda_square.cpp through Backend::begin_square), L-inf at 0.3 and L2 at 3.0 with 1,000
//   queries, against the CPU's forward sessions (host/attack/attack_square.cpp);
// - FAB-T (host/cuda/cuda_fab.cpp through Backend::begin_fab), L-inf at 0.3 and L2 at 2.0 with 3 targets of 100
//   iterations, against the CPU's host device (host/attack/fab_host_device.cpp), which the CPU backend's null
//   begin_fab selects.
// Both sides run the same row code (to the bit for Square and FAB-T, to an ulp or so for APGD: the kernel suites
// tests/test_cuda_kernels_*.cpp); the networks differ by FP32 reordering, so a point near the boundary can fall
// either way (an APGD pixel an ulp apart, a Square acceptance whose margins tie within an ulp, a FAB-T projection
// moved by a gradient's last bits): the broken counts must agree within 2 of 200 (1%) and the broken sets differ in
// at most 4 points. Those bounds are a judgement until a card has run this; the observed counts are printed for
// docs/gpu-runs.md.
// - The CUDA Square and FAB-T devices against their host emulations (tests/support/square_host_device.cpp,
//   host/attack/fab_host_device.cpp) on the same card, at the same lag: the same list lengths, so the same batch sizes through the same network code, and rows that do no
//   arithmetic beyond the logits: the outcome must be the same bits. This is what checks the loop, the lagged list
//   and the kernels together where the CPU comparison's tolerance would hide a few wrong entries.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "attack_points.h"
#include "attack_records.h"
#include "attacks.h"
#include "cpu_backend.h"
#include "cuda_test_util.h"
#include "mnist.h"
#include "model.h"

#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#include "cuda_fab.h"
#include "cuda_square.h"
#include "fab_host_device.h"
#include "square_host_device.h"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using testing_support::all_entries;
using testing_support::count_broken;

constexpr int kPoints = 200, kD = 784;
const std::string kRobust = NUDGE_SOURCE_DIR "/data/models/mnist_cnn_robust.safetensors";

class CudaAttackRun : public ::testing::Test {
 protected:
  void SetUp() override {
    NUDGE_REQUIRE_CUDA_DEVICE();
    REQUIRE_MNIST();
    const Model model = Model::load(kRobust);
    cpu = make_cpu_backend();
    gpu = make_cuda_backend(0);
    cpu->load_model(model);
    gpu->load_model(model);
    points = testing_support::first_test_points(kPoints);
  }

  // The agreement of the two records and the re-check of the GPU's; `what` names the run in the printed counts.
  void compare(const std::string& what, const AttackSet& set, const AttackRecord& a, const AttackRecord& b,
               long cpu_cost, long gpu_cost, double slack) {
    int differ = 0, both = 0, same_step = 0;
    for (int e = 0; e < kPoints; ++e) {
      differ += a.broken[e] != b.broken[e];
      if (a.broken[e] && b.broken[e]) {
        ++both;
        same_step += a.step[e] == b.step[e];
      }
    }
    std::printf("[   INFO   ] %s: broken cpu %d, gpu %d, %d differ, %d of %d at the same step; cost cpu %ld, gpu %ld\n",
                what.c_str(), count_broken(a), count_broken(b), differ, same_step, both, cpu_cost, gpu_cost);
    EXPECT_LE(std::abs(count_broken(a) - count_broken(b)), 2);
    EXPECT_LE(differ, 4);
    EXPECT_GT(count_broken(b), 0);
    EXPECT_TRUE(testing_support::examples_recheck(*gpu, set, b, slack));
  }

  // APGD-CE over every point at eps in `norm`; `slack` covers the rounding of the projection onto the ball.
  void apgd_agrees(Norm norm, float eps, double slack) {
    const AttackSet set = testing_support::attack_set(points, kPoints, eps, norm);
    ApgdConfig cfg;
    AttackRecord a, b;
    a.resize(kPoints, kD);
    b.resize(kPoints, kD);
    const long ca = run_apgd(*cpu, set, all_entries(kPoints), cfg, AttackId::ApgdCe, 1, a);
    const long cb = run_apgd(*gpu, set, all_entries(kPoints), cfg, AttackId::ApgdCe, 1, b);
    compare(std::string("apgd-ce ") + (norm == Norm::L2 ? "l2 " : "linf ") + std::to_string(eps), set, a, b, ca, cb,
            slack);
  }

  // Square with 1,000 queries over every point at eps in `norm`.
  void square_agrees(Norm norm, float eps, double slack) {
    const AttackSet set = testing_support::attack_set(points, kPoints, eps, norm);
    SquareConfig cfg;
    cfg.queries = 1000;
    AttackRecord a, b;
    a.resize(kPoints, kD);
    b.resize(kPoints, kD);
    const long ca = run_square(*cpu, set, all_entries(kPoints), cfg, 28, 28, 1, a);
    const long cb = run_square(*gpu, set, all_entries(kPoints), cfg, 28, 28, 1, b);
    for (int e = 0; e < kPoints; ++e)
      if (b.broken[e]) {
        EXPECT_EQ(b.attack[e], static_cast<int32_t>(AttackId::Square)) << "point " << e;
      }
    compare(std::string("square ") + (norm == Norm::L2 ? "l2 " : "linf ") + std::to_string(eps), set, a, b, ca, cb,
            slack);
  }

  // FAB-T with 3 targets over every point at eps in `norm` (AutoAttack runs 9; each target after the first runs on
  // the entries the earlier ones left robust, and 3 already cover that). The CPU breaks 13 of 200 at L-inf 0.3 and
  // 189 at L2 2.0 (18 s on two cores for both).
  void fab_agrees(Norm norm, float eps, double slack) {
    AttackSet set = testing_support::attack_set(points, kPoints, eps, norm);
    // The targets by the CPU's clean logits, for both runs (the ranks' ties then cannot differ).
    testing_support::rank_by_clean_logits(*cpu, set);
    FabConfig cfg;
    cfg.targets = 3;
    // The GPU's run is the device's, not the host device through logit_backprop.
    {
      const std::vector<int32_t> target = testing_support::first_targets(set);
      const FabRunInput in = testing_support::fab_input(set, target);
      ASSERT_NE(gpu->begin_fab(in), nullptr);
      ASSERT_EQ(cpu->begin_fab(in), nullptr);
    }
    AttackRecord a, b;
    a.resize(kPoints, kD);
    b.resize(kPoints, kD);
    const long ca = run_fab_targeted(*cpu, set, all_entries(kPoints), cfg, 1, a);
    const long cb = run_fab_targeted(*gpu, set, all_entries(kPoints), cfg, 1, b);
    for (int e = 0; e < kPoints; ++e)
      if (b.broken[e]) {
        EXPECT_EQ(b.attack[e], static_cast<int32_t>(AttackId::FabT)) << "point " << e;
      }
    compare(std::string("fab-t ") + (norm == Norm::L2 ? "l2 " : "linf ") + std::to_string(eps), set, a, b, ca, cb,
            slack);
  }

  std::unique_ptr<Backend> cpu, gpu;
  testing_support::Points points;
};

TEST_F(CudaAttackRun, ApgdLinfAgreesWithTheCpuRun) { apgd_agrees(Norm::Linf, 0.3f, 1e-6); }
TEST_F(CudaAttackRun, ApgdL2AgreesWithTheCpuRun) { apgd_agrees(Norm::L2, 2.0f, 1e-5); }

TEST_F(CudaAttackRun, SquareLinfAgreesWithTheCpuRun) { square_agrees(Norm::Linf, 0.3f, 1e-6); }
TEST_F(CudaAttackRun, SquareL2AgreesWithTheCpuRun) { square_agrees(Norm::L2, 3.0f, 1e-5); }

TEST_F(CudaAttackRun, FabLinfAgreesWithTheCpuRun) { fab_agrees(Norm::Linf, 0.3f, 1e-6); }
TEST_F(CudaAttackRun, FabL2AgreesWithTheCpuRun) { fab_agrees(Norm::L2, 2.0f, 1e-5); }

// A device run and its host emulation on the same card: the same entries broken at the same step with the same
// images, and some broken at all.
void expect_same_bits(const AttackRunResult& a, const AttackRunResult& b) {
  int broken = 0;
  for (int e = 0; e < kPoints; ++e) {
    broken += a.broken[e];
    ASSERT_EQ(a.broken[e], b.broken[e]) << "entry " << e;
    if (!a.broken[e]) continue;
    EXPECT_EQ(a.step[e], b.step[e]) << "entry " << e;
    ASSERT_EQ(std::memcmp(a.adv.data() + e * kD, b.adv.data() + e * kD, kD * sizeof(float)), 0) << "entry " << e;
  }
  EXPECT_GT(broken, 0);
}

TEST_F(CudaAttackRun, SquareDeviceIsItsHostEmulationOnTheSameCard) {
  const std::vector<double> patterns = square_l2_pattern_table(27);
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    SCOPED_TRACE(norm == Norm::L2 ? "L2" : "Linf");
    const AttackSet set = testing_support::attack_set(points, kPoints, norm == Norm::L2 ? 3.0f : 0.3f, norm);
    SquareRunInput in;
    in.m = kPoints;
    in.H = 28;
    in.W = 28;
    in.K = set.K;
    in.norm = norm;
    in.patterns = patterns.data();
    in.pattern_count = patterns.size();
    in.x0 = set.x0.data();
    in.label = set.label.data();
    in.eps = set.eps.data();
    in.point = set.point.data();
    in.seed = 1;
    in.attack = static_cast<uint32_t>(AttackId::Square);
    SquareConfig cfg;
    cfg.queries = 600;
    auto side = [&](int it) { return square_window_side(norm, cfg, it, 28, 28); };
    std::unique_ptr<SquareDevice> device = gpu->begin_square(in);
    ASSERT_NE(device, nullptr);
    const long rows_device = drive_square(*device, in.m, cfg.queries, side);
    const SquareRunResult a = device->finish();
    device.reset();
    auto host = test::make_host_square_device(*gpu, in, cuda::kSquareCompactionLag, false);
    const long rows_host = drive_square(*host, in.m, cfg.queries, side);
    const SquareRunResult b = host->finish();
    expect_same_bits(a, b);
    EXPECT_EQ(rows_device, rows_host);
  }
}

// FAB-T's device against the host device driving the same card's network through logit_backprop, at the device's
// lag: the same list lengths and batch sizes through the same network code, and rows that the host lanes compute to
// the kernels' bits (--fmad=false), so the outcome must be the same bits.
TEST_F(CudaAttackRun, FabDeviceIsItsHostEmulationOnTheSameCard) {
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    SCOPED_TRACE(norm == Norm::L2 ? "L2" : "Linf");
    // Radii at which about half the entries break (on the CPU: 47% at L-inf 0.4, 45% at L2 1.5, first target, 60
    // iterations), at steps spread over the run, so the list's lengths and the broken steps check many iterations.
    AttackSet set = testing_support::attack_set(points, kPoints, norm == Norm::L2 ? 1.5f : 0.4f, norm);
    testing_support::rank_by_clean_logits(*gpu, set);
    const std::vector<int32_t> target = testing_support::first_targets(set);
    const FabRunInput in = testing_support::fab_input(set, target);
    std::unique_ptr<FabDevice> device = gpu->begin_fab(in);
    ASSERT_NE(device, nullptr);
    const long rows_device = drive_fab(*device, in.m, 60, in);
    const FabRunResult a = device->finish();
    device.reset();
    auto host = make_host_fab_device(*gpu, in, cuda::kFabCompactionLag, false);
    const long rows_host = drive_fab(*host, in.m, 60, in);
    const FabRunResult b = host->finish();
    expect_same_bits(a, b);
    EXPECT_EQ(rows_device, rows_host);
  }
}

#else  // !NUDGE_HAVE_CUDA

TEST(CudaAttackRun, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
