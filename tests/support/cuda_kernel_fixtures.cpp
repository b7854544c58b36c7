#include "cuda_kernel_fixtures.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <string>

#include "optimize_types.h"

namespace nudge::test {

#if NUDGE_HAVE_CUDA

void CudaKernels::SetUp() {
  NUDGE_REQUIRE_CUDA_DEVICE();
  const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  rng_.seed(test::test_seed() ^ std::hash<std::string>{}(name));
}

std::vector<float> CudaKernels::normal(size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng_);
  return v;
}

std::vector<float> CudaKernels::uniform(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng_);
  return v;
}

std::vector<int32_t> CudaKernels::sample(int count, int range) {
  std::vector<int32_t> v(range);
  std::iota(v.begin(), v.end(), 0);
  std::shuffle(v.begin(), v.end(), rng_);
  v.resize(count);
  return v;
}

LossCase CudaLossKernels::make_case(int K) {
  LossCase c;
  c.K = K;
  c.rows = 257;  // three blocks of 128, the last one partial
  c.entries = 300;
  c.entry = sample(c.rows, c.entries);
  c.logits = normal(static_cast<size_t>(c.rows) * K, 4.0f);
  for (int i = 0; i < c.rows; ++i)
    if (randint(0, 9) == 0)  // logits of +-1e4: the log-sum-exp must stay finite
      for (int j = 0; j < K; ++j) c.logits[static_cast<size_t>(i) * K + j] *= 2500.0f;
  c.kind.resize(c.entries);
  c.cls.resize(c.entries);
  c.dist.assign(static_cast<size_t>(c.entries) * K, 0.0f);
  for (int e = 0; e < c.entries; ++e) {
    c.kind[e] = randint(0, 2);
    c.cls[e] = randint(0, K - 1);
    float* t = c.dist.data() + static_cast<size_t>(e) * K;
    if (c.kind[e] == static_cast<int>(TargetKind::OneHot)) t[c.cls[e]] = 1.0f;
    if (c.kind[e] == static_cast<int>(TargetKind::Soft)) {
      float s = 0;
      for (int j = 0; j < K; ++j) s += t[j] = randint(0, 2) == 0 ? 0.0f : uniform01();
      if (s == 0) s = t[0] = 1.0f;
      for (int j = 0; j < K; ++j) t[j] /= s;
    }
  }
  return c;
}

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
