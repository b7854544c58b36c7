// Fixtures of the kernel suites (tests/test_cuda_kernels_*.cpp). CudaKernels needs a usable device (else the test
// skips, or fails under NUDGE_REQUIRE_GPU) and seeds a generator from the run's seed (test_seed(), NUDGE_TEST_SEED
// replays it) and the test's name, from which each test draws its inputs. CudaLossKernels adds the random case of the
// softmax/loss kernels: logits of rows mapped to entries, and each entry's target (one-hot, soft or untargeted).
#pragma once
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda_test_util.h"

namespace nudge::test {

#if NUDGE_HAVE_CUDA

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override;

  int randint(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  float uniform01() { return std::uniform_real_distribution<float>(0.0f, 1.0f)(rng_); }
  std::vector<float> normal(size_t n, float sd = 1.0f);
  std::vector<float> uniform(size_t n, float lo, float hi);
  // `count` distinct values of [0, range) in random order.
  std::vector<int32_t> sample(int count, int range);

  std::mt19937_64 rng_;
};

struct LossCase {
  int rows, entries, K;
  std::vector<int32_t> entry, kind, cls;
  std::vector<float> logits, dist;
};

class CudaLossKernels : public CudaKernels {
 protected:
  // 257 rows (three blocks of 128, the last one partial) over 300 entries; one row in ten has logits of +-1e4.
  LossCase make_case(int K);
};

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
