// Jobs, runs and comparisons of the fused-kernel suites (tests/test_cuda_fused_*.cpp), all on the committed
// reference model: noise-image jobs with targets relative to the model's own prediction, the CPU backend's optimize
// chunk as the reference, the kernel's host emulation (fused_optimize_emulate) driven as FusedChunk drives the
// device, and comparisons of chunk results, bounded or bit for bit (the bounds are reasoned in the file comment of
// tests/test_cuda_fused_device.cpp). NUDGE_PRINT_ERRORS=1 prints the measured maxima.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "model.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "fused_optimize.cuh"
#endif

namespace nudge::test {

#if NUDGE_HAVE_CUDA

constexpr int kD = 784, kK = 10;

// data/models/mnist_cnn.safetensors, loaded once.
const Model& reference_model();

// ---- jobs ----------------------------------------------------------------------------------------------------------

struct Job {
  int n = 0;
  std::vector<float> start, init, dist, eps;
  std::vector<int32_t> kind, cls;
  ChunkInput input() const {
    ChunkInput in;
    in.n = n;
    in.start = start.data();
    in.init = init.empty() ? nullptr : init.data();
    in.target_dist = dist.data();
    in.target_kind = kind.data();
    in.target_class = cls.data();
    in.eps = eps.data();
    return in;
  }
};

enum class Targets { OneHot, Mixed, StartClass };

// Noise start images; targets relative to the model's own prediction of each start, so that none is met at the
// start (except StartClass, whose one-hot target is the predicted class itself: met at step 0).
// Mixed cycles one-hot, untargeted (the "true label" is the predicted class) and soft (0.6 / 0.4).
Job make_job(int n, uint64_t seed, Targets targets, float eps);

StepConfig step_config(LossKind loss, InputOptimizer opt, Norm norm, float lr, bool early_stop);

// The engine's loop (host/optimize/optimize_engine.cpp) on any chunk.
ChunkResult drive(OptimizeChunk& chunk, int steps);

// `steps` steps of the CPU backend's chunk on the reference model.
ChunkResult run_cpu(const Job& job, const StepConfig& cfg, int steps);

// ---- the host emulation, driven like FusedChunk ---------------------------------------------------------------------

struct EmulationOptions {
  int tile = cuda::kFusedTileMax;
  int blocks = 3;
  int steps_per_launch = 1;
  bool reverse_threads = false;
  std::vector<int32_t>* start_class = nullptr;  // when given: FusedParams::start_class, starting at -1
};

ChunkResult run_emulated(const Job& job, const StepConfig& cfg, int steps, const EmulationOptions& opt);

// ---- comparisons ----------------------------------------------------------------------------------------------------

// Whether NUDGE_PRINT_ERRORS is set to anything but "" or "0".
bool print_errors();

// |got - ref| <= atol + rtol |ref| element-wise; NaN fails. Names the worst element and the first mismatches.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double rtol, double atol,
                  const std::string& what);

template <class T>
void expect_equal(const std::vector<T>& got, const std::vector<T>& ref, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0;
  std::string first;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::memcmp(&got[i], &ref[i], sizeof(T)) != 0 && bad++ < 5)
      first += "\n    [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " ref " + std::to_string(ref[i]);
  if (bad) ADD_FAILURE() << what << ": " << bad << " of " << ref.size() << " elements differ; first:" << first;
}

// A goal decision closer to its threshold than this (in probability, or KL, units) can go either way under the
// device's rounding: 1e-4 is the probabilities' own tolerance (relative 1e-4 of values <= 1).
constexpr double kDecisionMargin = 1e-4;

// A chunk result against the reference's: numbers within the tolerances (the file comment of
// tests/test_cuda_fused_device.cpp), counts exactly except for the borderline entries (all entries count when `skip`
// is null).
void expect_matches_cpu(const ChunkResult& got, const ChunkResult& cpu, double image_atol, const std::string& what,
                        const std::vector<bool>* skip = nullptr);

// Bit for bit.
void expect_identical(const ChunkResult& a, const ChunkResult& b, const std::string& what);

struct NamedConfig {
  const char* name;
  StepConfig cfg;
  float eps;
};

// Every loss and norm, each optimizer at least once; SGD where one step is compared image by image.
std::vector<NamedConfig> one_step_configs();

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
