// What the optimize engine costs on the host, apart from the network: building each chunk's inputs (start images,
// random starts in the eps-ball, targets), the start-image predict call, and turning results into rows (and, with
// the report, CSV/NPY lines). On a GPU this is the ceiling on end-to-end speed: at the fused kernel's predicted
// ~200 ns per image-step, a 20-step job needs the host to deliver a row every ~4 us per entry, or the card waits.
//
// The backend here does no arithmetic: predict() writes a fixed distribution and a chunk's finish() hands back its
// start images. items/s = rows/s of the whole engine (run_optimize), timed in wall time.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "allocator_policy.h"
#include "architecture.h"
#include "backend.h"
#include "model.h"
#include "optimize_engine.h"
#include "optimize_report.h"
#include "start_images.h"

namespace {

using namespace nudge;

class NullChunk : public OptimizeChunk {
 public:
  // device_us_per_entry: simulated device time of the whole chunk per entry, slept in finish() (a GPU's compute).
  NullChunk(const ChunkInput& in, int D, int K, double device_us_per_entry = 0)
      : n_(in.n), device_us_(device_us_per_entry * in.n) {
    r_.best_images.assign(in.start, in.start + static_cast<size_t>(in.n) * D);
    r_.best_probs.assign(static_cast<size_t>(in.n) * K, 1.0f / K);
    r_.best_loss.assign(in.n, 1.0f);
    r_.success_step.assign(in.n, -1);
    r_.updates.assign(in.n, 0);
  }
  void step() override {}
  int active_count() const override { return n_; }
  ChunkResult finish() override {
    if (device_us_ > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(device_us_));
    return std::move(r_);
  }

 private:
  int n_;
  double device_us_;
  ChunkResult r_;
};

class NullBackend : public Backend {
 public:
  explicit NullBackend(double device_us_per_entry = 0) : device_us_(device_us_per_entry) {}
  std::string name() const override { return "null"; }
  bool is_gpu() const override { return true; }  // the engine should treat it as it treats a GPU
  void load_model(const Model& m) override { arch_ = m.arch; }
  void store_model(Model&) override {}
  TrainState export_train_state() override { return {}; }
  void import_train_state(const TrainState&) override {}
  void predict(const float*, int n, float* probs) override {
    std::fill(probs, probs + static_cast<size_t>(n) * arch_.num_classes(), 1.0f / arch_.num_classes());
  }
  TrainStepResult train_step(const float*, const int32_t*, int, const AdamConfig&) override { return {}; }
  TrainStepResult train_step_trades(const float*, const float*, const int32_t*, int, float, const AdamConfig&) override {
    return {};
  }
  void input_gradient(const float*, int, const float*, const int32_t*, const int32_t*, LossKind, float, float*, float*,
                      float*) override {}
  void logit_backprop(const float*, int, const LogitGradient&, float*) override {}
  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig&) override {
    return std::make_unique<NullChunk>(in, arch_.input.size(), arch_.num_classes(), device_us_);
  }
  int preferred_chunk() const override { return 8192; }

 private:
  double device_us_;
  Architecture arch_;
};

// A private folder under /tmp for the report's files, removed with everything in it; empty path if none could be made.
class ScratchFolder {
 public:
  ScratchFolder() {
    char name[] = "/tmp/nudge_bench_XXXXXX";
    if (mkdtemp(name)) path_ = name;
  }
  ~ScratchFolder() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct CountingSink : RowSink {
  long rows = 0;
  void row(const RowResult&) override { ++rows; }
};

// Arg 0: rows. Arg 1: 0 = noise -> class 2; 1 = noise -> all classes (10 rows per start image); 2 = noise with a
// random start in an L-inf ball of 0.1 (a Philox draw per pixel per entry). Arg 2: 1 = write the full report.
void BM_engine_host(benchmark::State& state) {
  const long rows = state.range(0);
  const int kind = static_cast<int>(state.range(1));
  const bool report = state.range(2) != 0;
  const Model model = Model::glorot(Architecture::reference(), 1);
  NullBackend backend;
  backend.load_model(model);
  OptimizeJob job;
  job.steps = 20;
  job.target = kind == 1 ? "all" : "2";
  job.count = kind == 1 ? rows / 10 : rows;
  if (kind == 2) {
    job.eps = {0.1f};
    job.random_start = true;
    job.step.norm = Norm::Linf;
  }
  const StartImages starts(job, nullptr, 28, 28);
  const ScratchFolder scratch;
  if (report && scratch.path().empty()) {
    state.SkipWithError("cannot make a temporary folder under /tmp");
    return;
  }
  const std::string& dir = scratch.path();
  for (auto _ : state) {
    if (report) {
      OptimizeReport sink(dir + "/out", job.count * (kind == 1 ? 10 : 1), 10, 28, 28, job.steps);
      const EngineStats stats = run_optimize(backend, model, job, starts, sink, false);
      sink.finish(nlohmann::json::object(), stats.image_steps, stats.entries_per_row);
    } else {
      CountingSink sink;
      run_optimize(backend, model, job, starts, sink, false);
      benchmark::DoNotOptimize(sink.rows);
    }
  }
  state.SetItemsProcessed(state.iterations() * rows);
}

// The overlap itself: chunks that keep a simulated device busy for 4 us per entry (20 steps at the fused kernel's
// predicted ~200 ns), noise -> class 2 with the full report. If the host side were serial with the device, rows/s
// would be 1 / (4 us + the host's time per row); hidden behind it, 250k rows/s.
void BM_engine_overlap(benchmark::State& state) {
  const long rows = state.range(0);
  const Model model = Model::glorot(Architecture::reference(), 1);
  NullBackend backend(4.0);
  backend.load_model(model);
  OptimizeJob job;
  job.steps = 20;
  job.target = "2";
  job.count = rows;
  const StartImages starts(job, nullptr, 28, 28);
  const ScratchFolder scratch;
  if (scratch.path().empty()) {
    state.SkipWithError("cannot make a temporary folder under /tmp");
    return;
  }
  const std::string& dir = scratch.path();
  for (auto _ : state) {
    OptimizeReport sink(dir + "/out", rows, 10, 28, 28, job.steps);
    const EngineStats stats = run_optimize(backend, model, job, starts, sink, false);
    sink.finish(nlohmann::json::object(), stats.image_steps, stats.entries_per_row);
  }
  state.SetItemsProcessed(state.iterations() * rows);
}

BENCHMARK(BM_engine_overlap)->Arg(65536)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(3.0);

BENCHMARK(BM_engine_host)
    ->Args({65536, 0, 0})
    ->Args({262144, 0, 0})
    ->Args({65536, 1, 0})
    ->Args({65536, 2, 0})
    ->Args({65536, 0, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3.0);

}  // namespace

// BENCHMARK_MAIN, with the allocator set up as nudge's main sets it up. NUDGE_DEFAULT_MALLOC=1 leaves glibc's
// defaults, to measure what the policy buys.
int main(int argc, char** argv) {
  const char* keep_default = std::getenv("NUDGE_DEFAULT_MALLOC");
  if (!keep_default || std::string(keep_default) != "1") nudge::keep_large_allocations_for_reuse();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
