// Helpers for the CUDA test suites (tests/test_cuda_*.cpp): guarded device buffers, element-wise comparison with
// error reports, float's unit roundoff, a per-run seed, and the skip logic. Header-only; everything CUDA is inside
// NUDGE_HAVE_CUDA.
//
// Skips: every GPU test that cannot run says why through NUDGE_GPU_SKIP, never through GTEST_SKIP directly. With
// NUDGE_REQUIRE_GPU=1 (tools/gpu_check.sh sets it on the card) such a skip is a failure instead, so a GPU run that
// ran no GPU code (no driver, a probe that failed, a build without CUDA) cannot read as "0 failed".
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if NUDGE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda_backend.h"
#endif

namespace nudge::test {

// A fresh seed per run, printed so a failure can be replayed with NUDGE_TEST_SEED=<seed>.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* v = std::getenv("NUDGE_TEST_SEED");
    const uint64_t s = v ? std::strtoull(v, nullptr, 10) : (static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}());
    std::printf("[   SEED   ] NUDGE_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// Whether NUDGE_REQUIRE_GPU is set to anything but "" or "0".
inline bool gpu_required() {
  const char* v = std::getenv("NUDGE_REQUIRE_GPU");
  return v && *v && std::strcmp(v, "0") != 0;
}

// Skips the calling test (or SetUp) with the reason `why` (anything streamable), or fails it with that reason when
// NUDGE_REQUIRE_GPU is set. Like GTEST_SKIP, it returns from the calling function.
#define NUDGE_GPU_SKIP(why)                                                                              \
  do {                                                                                                   \
    if (::nudge::test::gpu_required()) {                                                                 \
      GTEST_FAIL() << "NUDGE_REQUIRE_GPU is set, so this GPU-test skip is a failure: " << why;           \
    } else {                                                                                             \
      GTEST_SKIP() << why;                                                                               \
    }                                                                                                    \
  } while (0)

struct Tolerance {
  double atol = 0, rtol = 0;
};

constexpr double kUlp = 1.0 / (1 << 24);  // unit roundoff of float (round to nearest)

// |gpu - ref| <= atol_i + rtol |ref| element-wise (atol_i = per_atol[i] when given, else tol.atol). NaN in gpu where
// ref is not NaN fails, so poisoned (never written) elements fail. On failure the message gives the count, max
// abs/rel error with their index, and the first mismatching pairs.
template <class T>
::testing::AssertionResult all_close(const std::string& what, const std::vector<T>& gpu, const std::vector<T>& ref,
                                     Tolerance tol, const std::vector<double>* per_atol = nullptr) {
  if (gpu.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": size " << gpu.size() << " vs reference " << ref.size();
  double max_abs = 0, max_rel = 0;
  size_t worst_abs = 0, worst_rel = 0, bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(gpu[i]), r = static_cast<double>(ref[i]);
    const bool both_nan = std::isnan(g) && std::isnan(r);
    const bool same_inf = std::isinf(g) && std::isinf(r) && (g > 0) == (r > 0);
    const double err = both_nan || same_inf ? 0.0 : std::fabs(g - r);
    const double rel = err / std::max(std::fabs(r), 1e-30);
    const double atol = per_atol ? (*per_atol)[i] : tol.atol;
    const bool ok = both_nan || same_inf || err <= atol + tol.rtol * std::fabs(r);
    if (!(err <= max_abs) || std::isnan(err)) {
      max_abs = std::isnan(err) ? INFINITY : err;
      worst_abs = i;
    }
    if (rel > max_rel) {
      max_rel = rel;
      worst_rel = i;
    }
    if (!ok && bad++ < 6) first << "\n    [" << i << "] gpu " << g << " ref " << r;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << ref.size() << " elements differ (atol "
                                       << tol.atol << (per_atol ? " per element" : "") << ", rtol " << tol.rtol
                                       << "); max abs err " << max_abs << " at " << worst_abs << ", max rel err "
                                       << max_rel << " at " << worst_rel << "; first mismatches:" << first.str();
}

template <class T>
::testing::AssertionResult all_equal(const std::string& what, const std::vector<T>& gpu, const std::vector<T>& ref) {
  if (gpu.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": size " << gpu.size() << " vs reference " << ref.size();
  size_t bad = 0, first_bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::memcmp(&gpu[i], &ref[i], sizeof(T)) != 0) {
      if (bad == 0) first_bad = i;
      if (bad++ < 6) first << "\n    [" << i << "] gpu " << +gpu[i] << " ref " << +ref[i];
    }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << ref.size()
                                       << " elements differ bitwise, first at " << first_bad << ":" << first.str();
}

#if NUDGE_HAVE_CUDA

// Skips the calling test unless a usable device is present (a failure under NUDGE_REQUIRE_GPU). Use as:
// NUDGE_REQUIRE_CUDA_DEVICE();
#define NUDGE_REQUIRE_CUDA_DEVICE()                                                  \
  do {                                                                               \
    std::string nudge_why_;                                                          \
    if (!::nudge::cuda_device_usable(&nudge_why_)) NUDGE_GPU_SKIP(nudge_why_);       \
  } while (0)

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A device buffer of `count` elements followed by kGuard sentinel elements. poison() fills the elements with a value
// no kernel writes (NaN for floats) and the guard with a sentinel; guard_intact() checks the guard afterwards.
template <class T>
class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 256;

  explicit GuardedBuffer(size_t count) : count_(count) {
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&ptr_), (count_ + kGuard) * sizeof(T)), "cudaMalloc (test buffer)");
    poison();
  }
  explicit GuardedBuffer(const std::vector<T>& data) : GuardedBuffer(data.size()) { upload(data); }
  ~GuardedBuffer() { cudaFree(ptr_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return count_; }

  void poison() {
    std::vector<T> host(count_ + kGuard);
    fill_bytes(host.data(), count_, poison_bits());
    fill_bytes(host.data() + count_, kGuard, kSentinelBits);
    cuda_ok(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "poison");
    // A pageable cudaMemcpy may return before its DMA lands; work on another (non-blocking) stream must not race it.
    cuda_ok(cudaDeviceSynchronize(), "poison (synchronize)");
  }
  void upload(const std::vector<T>& data) {
    if (data.size() != count_) throw std::runtime_error("GuardedBuffer::upload: size mismatch");
    cuda_ok(cudaMemcpy(ptr_, data.data(), count_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
    cuda_ok(cudaDeviceSynchronize(), "upload (synchronize)");
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    cuda_ok(cudaDeviceSynchronize(), "kernel (synchronize before download)");
    cuda_ok(cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }
  ::testing::AssertionResult guard_intact() const {
    std::vector<T> guard(kGuard);
    cuda_ok(cudaDeviceSynchronize(), "kernel (synchronize before guard check)");
    cuda_ok(cudaMemcpy(guard.data(), ptr_ + count_, kGuard * sizeof(T), cudaMemcpyDeviceToHost), "guard");
    std::vector<T> expect(kGuard);
    fill_bytes(expect.data(), kGuard, kSentinelBits);
    for (size_t i = 0; i < kGuard; ++i)
      if (std::memcmp(&guard[i], &expect[i], sizeof(T)) != 0)
        return ::testing::AssertionFailure() << "stray write " << i << " elements past the end of a " << count_
                                             << "-element buffer";
    return ::testing::AssertionSuccess();
  }

 private:
  static constexpr uint32_t kSentinelBits = 0xA5C3A5C3u;
  // A quiet NaN with a payload for floats; for integers a value no kernel produces here.
  static uint32_t poison_bits() { return std::is_floating_point<T>::value ? 0x7FC0DEADu : 0x5A5A5A5Au; }
  static void fill_bytes(T* dst, size_t n, uint32_t bits) {
    auto* bytes = reinterpret_cast<unsigned char*>(dst);
    for (size_t i = 0; i < n * sizeof(T); ++i) bytes[i] = static_cast<unsigned char>(bits >> (8 * (i % 4)));
  }

  T* ptr_ = nullptr;
  size_t count_;
};

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
