// CPU throughput of the three things nudge does, through the production Backend (never a copy of it):
//   train_step      one Adam step on a batch of 32             items/s = training images/s
//   input_gradient  forward + input gradient, batch 1024       items/s = images/s
//   optimize        OptimizeChunk::step on N noise starts      items/s = image-steps/s (N per step() call)
// The model is Glorot-initialised: speed does not depend on the weights, and the benchmark needs no files.
//
// Back-of-envelope for the reference model (valid 3x3 convs 24/36/64, dense 64/10), per image:
//   forward   conv1 26*26*24*9*2 = 0.29 MFLOP, conv2 11*11*36*24*9*2 = 1.88, conv3 3*3*64*36*9*2 = 0.37,
//             dense 0.08  ->  ~2.6 MFLOP
//   input gradient: backward through every layer's input, ~2x the forward less conv1's weight-shaped work
//             ->  ~7 MFLOP per image-step (forward + backward + Adam on 784 pixels)
//   training adds the weight gradients: ~8 MFLOP per image.
// At a few tens of GFLOP/s per core with OpenBLAS sgemm on these thin matrices, expect thousands of image-steps/s
// per core; the figures below are what the machine actually gives.
//
// The work is spread over OpenMP threads, so every benchmark reports real (wall) time.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "column_gemm.h"
#include "cpu_backend.h"
#include "model.h"
#include "optimize_types.h"
#include "start_images.h"

namespace {

using namespace nudge;

constexpr uint64_t kSeed = 1;

std::unique_ptr<Backend> make_loaded_backend() {
  auto backend = make_cpu_backend();
  backend->load_model(Model::glorot(Architecture::reference(), kSeed));
  return backend;
}

std::vector<float> uniform_pixels(size_t count, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(count);
  for (float& v : x) v = u(gen);
  return x;
}

// The column GEMM (host/cpu/column_gemm.h) on conv2 of the reference model computed directly from one image (36
// output channels, 216-term sums, 141 columns of which 121 are kept), 64 images per call, on one thread, per
// instruction set: items/s = images/s, and the GFLOP/s counter counts the kept multiply-adds (2 FLOP each).
void BM_column_gemm_conv2(benchmark::State& state) {
  const auto isa = static_cast<cpu::CpuIsa>(state.range(0));
  if (!cpu::cpu_isa_supported(isa)) {
    state.SkipWithError("this CPU lacks the instruction set");
    return;
  }
  const Shape3 in{24, 13, 13};
  const int K = 36, R = in.c * 9, images = 64, Wo = 11;
  const std::vector<float> x = uniform_pixels(static_cast<size_t>(images) * in.size(), 11);
  const std::vector<float> w = uniform_pixels(static_cast<size_t>(K) * R, 12), b = uniform_pixels(K, 13);
  std::vector<float> y(static_cast<size_t>(images) * K * Wo * Wo);
  std::vector<std::ptrdiff_t> rows(R);
  for (int c = 0; c < in.c; ++c)
    for (int ki = 0; ki < 3; ++ki)
      for (int kj = 0; kj < 3; ++kj) rows[(c * 3 + ki) * 3 + kj] = (c * in.h + ki) * in.w + kj;
  cpu::ColumnGemm g;
  g.M = K;
  g.N = (Wo - 1) * in.w + Wo;
  g.K = R;
  g.a = w.data();
  g.a_row = R;
  g.a_col = 1;
  g.b = x.data();
  g.b_rows = rows.data();
  g.c = y.data();
  g.c_row = Wo * Wo;
  g.seg_period = in.w;
  g.seg_len = Wo;
  g.seg_stride = Wo;
  g.batch = images;
  g.b_batch = in.size();
  g.c_batch = static_cast<std::ptrdiff_t>(K) * Wo * Wo;
  g.row_bias = b.data();
  g.relu = true;
  for (auto _ : state) {
    cpu::column_gemm(g, isa);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * images);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * K * R * Wo * Wo * images * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.SetLabel(cpu::cpu_isa_name(isa));
}

// Logits of a batch (the Square attack's whole cost is forward passes).
void BM_forward(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto backend = make_loaded_backend();
  const Architecture arch = Architecture::reference();
  const std::vector<float> x = uniform_pixels(static_cast<size_t>(n) * arch.input.size(), 14);
  std::vector<float> probs(static_cast<size_t>(n) * arch.num_classes());
  for (auto _ : state) {
    backend->predict(x.data(), n, probs.data());
    benchmark::DoNotOptimize(probs.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetLabel(backend->name());
}

// One-hot targets i mod K, as the optimize job's target "all" lays them out (row r of a source -> class r).
struct Targets {
  std::vector<float> dist;
  std::vector<int32_t> kind, cls;
  Targets(int n, int K) : dist(static_cast<size_t>(n) * K, 0.0f), kind(n, static_cast<int32_t>(TargetKind::OneHot)), cls(n) {
    for (int i = 0; i < n; ++i) {
      cls[i] = i % K;
      dist[static_cast<size_t>(i) * K + cls[i]] = 1.0f;
    }
  }
};

void BM_train_step(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto backend = make_loaded_backend();
  const int D = Architecture::reference().input.size();
  const std::vector<float> x = uniform_pixels(static_cast<size_t>(n) * D, 7);
  std::vector<int32_t> labels(n);
  std::mt19937 gen(8);
  for (int32_t& l : labels) l = static_cast<int32_t>(gen() % 10);
  const AdamConfig adam;
  for (auto _ : state) {
    const TrainStepResult r = backend->train_step(x.data(), labels.data(), n, adam);
    benchmark::DoNotOptimize(r.loss_sum);
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetLabel(backend->name());
}

void BM_input_gradient(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto backend = make_loaded_backend();
  const Architecture arch = Architecture::reference();
  const int D = arch.input.size(), K = arch.num_classes();
  const std::vector<float> x = uniform_pixels(static_cast<size_t>(n) * D, 9);
  const Targets t(n, K);
  std::vector<float> probs(static_cast<size_t>(n) * K), loss(n), grad(static_cast<size_t>(n) * D);
  for (auto _ : state) {
    backend->input_gradient(x.data(), n, t.dist.data(), t.kind.data(), t.cls.data(), LossKind::CrossEntropy, 0.0f,
                            probs.data(), loss.data(), grad.data());
    benchmark::DoNotOptimize(grad.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetLabel(backend->name());
}

// Noise starts (the engine's own generator, source i/K) with one-hot targets i mod K: what `nudge optimize
// --init noise --target all` hands the backend. Adam lr 0.1, no early stop, so every entry stays active and each
// step() call is exactly N image-steps. The chunk is built once, outside the timed loop; every iteration is one
// more step of the same chunk.
void BM_optimize(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  auto backend = make_loaded_backend();
  const Architecture arch = Architecture::reference();
  const int D = arch.input.size(), K = arch.num_classes();
  std::vector<float> start(static_cast<size_t>(n) * D);
  for (int i = 0; i < n; ++i) noise_image(kSeed, i / K, D, start.data() + static_cast<size_t>(i) * D);
  const Targets t(n, K);

  StepConfig cfg;
  cfg.loss = LossKind::CrossEntropy;
  cfg.optimizer = InputOptimizer::Adam;
  cfg.lr = 0.1f;
  cfg.adam_eps = 1e-7f;
  cfg.early_stop = false;
  cfg.norm = Norm::None;

  ChunkInput in;
  in.n = n;
  in.start = start.data();
  in.target_dist = t.dist.data();
  in.target_kind = t.kind.data();
  in.target_class = t.cls.data();
  auto chunk = backend->begin_optimize(in, cfg);
  for (auto _ : state) chunk->step();
  if (chunk->active_count() != n) state.SkipWithError("entries stopped early; the count of image-steps is wrong");
  state.SetItemsProcessed(state.iterations() * n);
  state.SetLabel(backend->name());
}

// Min times are short so that the whole binary finishes well inside a minute on two cores; one optimize step at
// N = 8192 already takes about a second there.
BENCHMARK(BM_column_gemm_conv2)
    ->Arg(static_cast<int>(cpu::CpuIsa::Scalar))
    ->Arg(static_cast<int>(cpu::CpuIsa::Avx2))
    ->Arg(static_cast<int>(cpu::CpuIsa::Avx512))
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5);
BENCHMARK(BM_forward)->Arg(1024)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_train_step)->Arg(32)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_input_gradient)->Arg(1024)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_optimize)->Arg(1024)->Arg(8192)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
