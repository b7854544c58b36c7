// GPU throughput of the two workloads nudge exists for, through the production Backend interface (the same calls
// the engine and the trainer make):
//   BM_CudaOptimizeStep/N  optimize image-steps per second for a chunk of N entries (forward, loss, bookkeeping,
//                          backward to the input, fused Adam step + L-inf projection, early-stop compaction and its
//                          4-byte read-back). The goal is unreachable, so all N entries stay active.
//   BM_CudaTrainStep/N     training images per second at batch N (host-to-device copy of the batch included, as
//                          the trainer pays it).
// Each step ends with a host synchronization (the compaction count; the train step's loss), so wall time is GPU
// time plus launch overhead. Warm-up steps run before timing (algorithm choice, allocations). Use
// --benchmark_repetitions=5 --benchmark_report_aggregates_only=true for medians.
//
// Floor: the reference model costs ~2.7 MFLOP forward per image and about as much again for the backward pass to
// the input, ~5.3 MFLOP per image-step (reported as GFLOP/s next to the H100's ~60 TFLOP/s of non-tensor FP32);
// training adds the weight gradients, ~8 MFLOP per image. Bandwidth: ~0.5 MB of activations per image-step.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "model.h"
#include "start_images.h"
#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#endif

namespace nudge {
namespace {

// The backend, or null after reporting the skip.
std::unique_ptr<Backend> gpu_or_skip(benchmark::State& state) {
#if NUDGE_HAVE_CUDA
  std::string why;
  if (cuda_device_usable(&why)) return make_cuda_backend();
  // cuda_device_usable's reason usually starts with "no CUDA device found"; say it once.
  const std::string msg = why.rfind("no CUDA device", 0) == 0 ? why : "no CUDA device usable: " + why;
  state.SkipWithError(msg.c_str());
#else
  state.SkipWithError("no CUDA device (nudge was built without CUDA)");
#endif
  return nullptr;
}

// Forward FLOPs per image: 2 multiply-adds per weight use.
double forward_flops(const Architecture& a) {
  double f = 0;
  for (const LayerSpec& l : a.layers) {
    if (l.kind == LayerKind::Conv) f += 2.0 * l.out.size() * l.in.c * l.kernel * l.kernel;
    if (l.kind == LayerKind::Dense) f += 2.0 * l.in.size() * l.out_channels;
  }
  return f;
}

std::vector<float> noise(int n, int D) {
  std::vector<float> x(static_cast<size_t>(n) * D);
  for (int i = 0; i < n; ++i) noise_image(1, i, D, x.data() + static_cast<size_t>(i) * D);
  return x;
}

void BM_CudaOptimizeStep(benchmark::State& state) {
  auto gpu = gpu_or_skip(state);
  if (!gpu) return;
  const int n = static_cast<int>(state.range(0));
  const Model model = Model::glorot(Architecture::reference(), 1);
  gpu->load_model(model);
  const int D = model.arch.input.size(), K = model.arch.num_classes();
  const std::vector<float> x = noise(n, D), eps(n, 0.1f);
  std::vector<float> dist(static_cast<size_t>(n) * K, 0.0f);
  std::vector<int32_t> kind(n, static_cast<int32_t>(TargetKind::OneHot)), cls(n);
  for (int i = 0; i < n; ++i) {
    cls[i] = i % K;
    dist[static_cast<size_t>(i) * K + cls[i]] = 1.0f;
  }
  ChunkInput in;
  in.n = n;
  in.start = x.data();
  in.target_dist = dist.data();
  in.target_kind = kind.data();
  in.target_class = cls.data();
  in.eps = eps.data();
  StepConfig cfg;
  cfg.optimizer = InputOptimizer::Adam;
  cfg.lr = 0.01f;
  cfg.norm = Norm::Linf;
  cfg.early_stop = true;
  cfg.stop_prob = 2.0f;  // p >= 2 never holds: every entry stays active, every step does full work
  auto chunk = gpu->begin_optimize(in, cfg);
  for (int w = 0; w < 3; ++w) chunk->step();
  for (auto _ : state) chunk->step();
  if (chunk->active_count() != n) state.SkipWithError("entries stopped: the benchmark's goal should be unreachable");
  const double image_steps = static_cast<double>(n) * state.iterations();
  state.counters["image_steps_per_s"] = benchmark::Counter(image_steps, benchmark::Counter::kIsRate);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(image_steps * 2.0 * forward_flops(model.arch) * 1e-9, benchmark::Counter::kIsRate);
  state.SetLabel(gpu->name());
}

void BM_CudaTrainStep(benchmark::State& state) {
  auto gpu = gpu_or_skip(state);
  if (!gpu) return;
  const int n = static_cast<int>(state.range(0));
  const Model model = Model::glorot(Architecture::reference(), 1);
  gpu->load_model(model);
  const int D = model.arch.input.size(), K = model.arch.num_classes();
  const std::vector<float> x = noise(n, D);
  std::vector<int32_t> labels(n);
  for (int i = 0; i < n; ++i) labels[i] = i % K;
  AdamConfig adam;
  for (int w = 0; w < 2; ++w) gpu->train_step(x.data(), labels.data(), n, adam);
  for (auto _ : state) benchmark::DoNotOptimize(gpu->train_step(x.data(), labels.data(), n, adam));
  const double images = static_cast<double>(n) * state.iterations();
  state.counters["images_per_s"] = benchmark::Counter(images, benchmark::Counter::kIsRate);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(images * 3.0 * forward_flops(model.arch) * 1e-9, benchmark::Counter::kIsRate);
  state.SetLabel(gpu->name());
}

// Fixed iteration counts: each call of a benchmark function builds its chunk or batch anew, so letting the library
// search for an iteration count would repeat the (seconds-long at 100k) setup several times.
BENCHMARK(BM_CudaOptimizeStep)->Arg(1000)->Iterations(200)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CudaOptimizeStep)->Arg(10000)->Iterations(50)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CudaOptimizeStep)->Arg(100000)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CudaTrainStep)->Arg(1000)->Iterations(100)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CudaTrainStep)->Arg(10000)->Iterations(20)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CudaTrainStep)->Arg(100000)->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace nudge

BENCHMARK_MAIN();
