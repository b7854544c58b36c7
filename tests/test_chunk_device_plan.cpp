// What the GPU hot path costs per chunk, counted without a GPU (host/core/chunk_device_plan.h): the CUDA backend takes
// its chunks' device memory through a ReusePool and checks at run time that it allocates exactly
// chunk_state_buffers() and uploads exactly chunk_upload_bytes(), so these counts are the card's.
//   - ReusePool: blocks come back to the pool and are handed out again; upstream sees no allocation in steady state.
//   - The engine, driven as on a GPU (two chunks alive at once) by a backend double that allocates each chunk's
//     state through a ReusePool over a counting allocator: after the first two chunks (the two alive at once), no
//     chunk allocates device memory, and every block is released by the end.
//   - A noise (and gray) job hands the backend a description of its start images instead of bytes to upload: zero
//     start-image bytes per chunk; the description names, entry by entry, the very image the host made. A gauss job,
//     whose images the device does not make, still uploads them (so the zero is a real count).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "backend.h"
#include "chunk_device_plan.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "model.h"
#include "optimize_engine.h"
#include "optimize_job.h"
#include "start_images.h"

namespace nudge {
namespace {

constexpr int kD = 784, kK = 10;

// Hands out distinct fake addresses and counts; nothing is dereferenced.
class CountingAllocator : public DeviceAllocator {
 public:
  void* allocate(size_t bytes, const char* what) override {
    if (fail_above && bytes > fail_above) throw std::bad_alloc();
    ++allocations;
    allocated_bytes += bytes;
    (void)what;
    void* p = reinterpret_cast<void*>(next_);
    next_ += (bytes + 256 + 255) / 256 * 256;
    live.insert(p);
    return p;
  }
  void release(void* p) noexcept override {
    ++releases;
    live.erase(p);
  }
  long allocations = 0, releases = 0;
  size_t allocated_bytes = 0, fail_above = 0;
  std::set<void*> live;

 private:
  uintptr_t next_ = 0x10000;
};

TEST(ReusePool, HandsReleasedBlocksOutAgain) {
  CountingAllocator up;
  {
    ReusePool pool(up);
    void* a = pool.allocate(1000, "a");
    void* b = pool.allocate(4000, "b");
    EXPECT_EQ(up.allocations, 2);
    pool.release(a);
    pool.release(b);
    EXPECT_EQ(up.releases, 0) << "released blocks stay in the pool";
    // The smallest kept block that fits: 900 takes a's 1000, 3000 takes b's 4000; 5000 fits neither.
    EXPECT_EQ(pool.allocate(900, "c"), a);
    EXPECT_EQ(pool.allocate(3000, "d"), b);
    EXPECT_EQ(up.allocations, 2);
    pool.allocate(5000, "e");
    EXPECT_EQ(up.allocations, 3);
  }
  EXPECT_EQ(up.releases, 0) << "lent blocks are the borrowers' to give back";
}

TEST(ReusePool, GivesKeptBlocksBackWhenUpstreamRunsOut) {
  CountingAllocator up;
  ReusePool pool(up);
  void* a = pool.allocate(100, "a");
  pool.release(a);
  up.fail_above = 150;  // upstream "full" for anything larger, until the kept block goes back
  EXPECT_THROW(pool.allocate(200, "b"), std::bad_alloc);
  EXPECT_EQ(up.releases, 1) << "the kept block was given back before the retry";
  EXPECT_EQ(pool.kept_blocks(), 0u);
}

// A backend that computes on the CPU and, beside that, does what the CUDA backend's begin_optimize does with device
// memory and uploads: the chunk's state buffers from a ReusePool (given back when the chunk dies), the upload
// counted by chunk_upload_bytes. is_gpu() is true so that the engine schedules as for a GPU. With report_classes,
// its chunks report start classes (ChunkResult::start_class) as the CUDA chunks do, shifted by `shift` so that a
// test can tell reported classes from predicted ones, and predict() calls are counted.
class CountingGpuDouble : public testing_support::DelegatingBackend {
 public:
  CountingGpuDouble() : pool_(device_) {}
  bool is_gpu() const override { return true; }
  void load_model(const Model& m) override {
    DelegatingBackend::load_model(m);
    D_ = m.arch.input.size();
    K_ = m.arch.num_classes();
  }
  void predict(const float* x, int n, float* probs) override {
    ++predicts;
    DelegatingBackend::predict(x, n, probs);
  }
  int preferred_chunk() const override { return 64; }

  struct ChunkRecord {
    long allocations_before = 0, allocations_after = 0;
    ChunkUploadBytes upload;
    bool description_matches_start = true;
  };
  std::vector<ChunkRecord> chunks;
  bool report_classes = false;
  int shift = 0;
  long predicts = 0;
  const CountingAllocator& device() const { return device_; }

  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
    ChunkRecord rec;
    rec.allocations_before = device_.allocations;
    auto chunk = std::make_unique<Chunk>(inner().begin_optimize(in, cfg), pool_);
    const bool classes = !in.init;
    for (const ChunkBuffer& b :
         chunk_state_buffers(in.n, D_, K_, cfg.optimizer == InputOptimizer::Adam, cfg.early_stop, classes))
      chunk->blocks.push_back(pool_.allocate(b.bytes, b.what));
    rec.allocations_after = device_.allocations;
    rec.upload = chunk_upload_bytes(in, D_, K_, cfg.early_stop);
    rec.description_matches_start = description_matches(in);
    chunks.push_back(rec);
    if (report_classes && classes) {
      // The first evaluation's classes, as the CUDA chunks take them (on the start images themselves).
      std::vector<float> probs(static_cast<size_t>(in.n) * K_);
      DelegatingBackend::predict(in.start, in.n, probs.data());
      for (int i = 0; i < in.n; ++i) {
        const float* q = probs.data() + static_cast<size_t>(i) * K_;
        chunk->start_class.push_back(static_cast<int32_t>((std::max_element(q, q + K_) - q + shift) % K_));
      }
    }
    return chunk;
  }

 private:
  struct Chunk : OptimizeChunk {
    Chunk(std::unique_ptr<OptimizeChunk> c, ReusePool& p) : inner(std::move(c)), pool(p) {}
    ~Chunk() override {
      for (void* b : blocks) pool.release(b);
    }
    void step() override { inner->step(); }
    int active_count() const override { return inner->active_count(); }
    ChunkResult finish() override {
      ChunkResult r = inner->finish();
      r.start_class = start_class;
      return r;
    }
    std::unique_ptr<OptimizeChunk> inner;
    ReusePool& pool;
    std::vector<void*> blocks;
    std::vector<int32_t> start_class;
  };

  // What a GPU would make from in.generated (the kernel's index arithmetic, kernels/noise.cu), against in.start.
  bool description_matches(const ChunkInput& in) const {
    const GeneratedStarts& g = in.generated;
    if (g.kind == GeneratedStarts::Kind::None) return true;
    std::vector<float> img(D_);
    for (int i = 0; i < in.n; ++i) {
      const long image = (g.first_row + i / g.entries_per_row) / g.rows_per_source;
      if (g.kind == GeneratedStarts::Kind::Noise) noise_image(g.seed, image, D_, img.data());
      else img.assign(D_, g.gray);
      if (std::memcmp(img.data(), in.start + static_cast<size_t>(i) * D_, D_ * sizeof(float)) != 0) return false;
    }
    return true;
  }

  CountingAllocator device_;
  ReusePool pool_;
  int D_ = 0, K_ = 0;
};

const Model& tiny_model() {
  static const Model m = Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 3);
  return m;
}

struct NullSink : RowSink {
  long rows = 0;
  std::vector<int> start_class;
  void row(const RowResult& r) override {
    ++rows;
    start_class.push_back(r.start_class);
  }
};

// 270 start images (target "all": one row each) x 2 radii = 540 entries in chunks of 64 (the last one smaller).
OptimizeJob many_chunk_job(InitKind init) {
  OptimizeJob job;
  job.init = init;
  job.count = 270;
  job.target = "all";
  job.eps = {0.1f, 0.2f};
  job.step.norm = Norm::Linf;
  job.step.early_stop = true;
  job.steps = 2;
  job.chunk = 64;
  return job;
}

TEST(ChunkDevicePlan, NoDeviceAllocationAfterTheFirstTwoChunks) {
  CountingGpuDouble gpu;
  gpu.load_model(tiny_model());
  const OptimizeJob job = many_chunk_job(InitKind::Noise);
  const StartImages starts(job, nullptr, 28, 28);
  NullSink sink;
  const EngineStats stats = run_optimize(gpu, tiny_model(), job, starts, sink, false);
  ASSERT_GE(stats.chunks, 5) << "the job must have several chunks to show reuse";
  ASSERT_EQ(gpu.chunks.size(), static_cast<size_t>(stats.chunks));
  const long per_chunk = static_cast<long>(chunk_state_buffers(1, kD, kK, true, true, true).size());
  for (size_t c = 0; c < gpu.chunks.size(); ++c) {
    const long made = gpu.chunks[c].allocations_after - gpu.chunks[c].allocations_before;
    SCOPED_TRACE("chunk " + std::to_string(c));
    if (c < 2) {
      // The first two chunks live at once (the engine begins chunk k+1 before chunk k steps): both allocate.
      EXPECT_EQ(made, per_chunk);
    } else {
      EXPECT_EQ(made, 0) << "a chunk after the first two allocated device memory";
    }
  }
  EXPECT_EQ(gpu.device().allocations, 2 * per_chunk);
  EXPECT_EQ(gpu.device().releases, 0) << "nothing freed on the device while the job runs (cudaFree synchronizes)";
  EXPECT_EQ(sink.rows, 270);
}

TEST(ChunkDevicePlan, NoiseAndGrayJobsUploadNoStartImages) {
  for (InitKind init : {InitKind::Noise, InitKind::Gray}) {
    SCOPED_TRACE(init == InitKind::Noise ? "noise" : "gray");
    CountingGpuDouble gpu;
    gpu.load_model(tiny_model());
    const OptimizeJob job = many_chunk_job(init);
    const StartImages starts(job, nullptr, 28, 28);
    NullSink sink;
    run_optimize(gpu, tiny_model(), job, starts, sink, false);
    ASSERT_GE(gpu.chunks.size(), 5u);
    for (size_t c = 0; c < gpu.chunks.size(); ++c) {
      EXPECT_EQ(gpu.chunks[c].upload.start_images, 0u) << "chunk " << c;
      EXPECT_GT(gpu.chunks[c].upload.total, 0u) << "targets and radii still travel";
      EXPECT_TRUE(gpu.chunks[c].description_matches_start)
          << "chunk " << c << ": the device would make other start images than the host's";
    }
  }
}

TEST(ChunkDevicePlan, GaussJobsStillUploadTheirStartImages) {
  CountingGpuDouble gpu;
  gpu.load_model(tiny_model());
  const OptimizeJob job = many_chunk_job(InitKind::Gauss);
  const StartImages starts(job, nullptr, 28, 28);
  NullSink sink;
  run_optimize(gpu, tiny_model(), job, starts, sink, false);
  ASSERT_FALSE(gpu.chunks.empty());
  size_t bytes = 0;
  for (const auto& c : gpu.chunks) bytes += c.upload.start_images;
  EXPECT_EQ(bytes, size_t{540} * kD * sizeof(float)) << "every entry's start image is uploaded";
}

// Chunks that report their first evaluation's classes spare the engine its predict pass, and those are the classes
// the rows carry; chunks that do not (the CPU backend, random starts) get the predict pass, once per chunk.
TEST(ChunkDevicePlan, StartClassesFromTheChunkReplaceThePredictPass) {
  const OptimizeJob job = many_chunk_job(InitKind::Noise);
  const StartImages starts(job, nullptr, 28, 28);
  CountingGpuDouble plain;
  plain.load_model(tiny_model());
  NullSink predicted;
  const EngineStats stats = run_optimize(plain, tiny_model(), job, starts, predicted, false);
  EXPECT_EQ(plain.predicts, stats.chunks) << "without reports: one predict pass per chunk";

  CountingGpuDouble reporting;
  reporting.load_model(tiny_model());
  reporting.report_classes = true;
  NullSink same;
  run_optimize(reporting, tiny_model(), job, starts, same, false);
  EXPECT_EQ(reporting.predicts, 0) << "a chunk that reports start classes needs no predict pass";
  EXPECT_EQ(same.start_class, predicted.start_class) << "the first evaluation's classes are the predict pass's";

  CountingGpuDouble shifted;
  shifted.load_model(tiny_model());
  shifted.report_classes = true;
  shifted.shift = 3;
  NullSink moved;
  run_optimize(shifted, tiny_model(), job, starts, moved, false);
  ASSERT_EQ(moved.start_class.size(), predicted.start_class.size());
  for (size_t r = 0; r < moved.start_class.size(); ++r)
    ASSERT_EQ(moved.start_class[r], (predicted.start_class[r] + 3) % kK) << "row " << r << ": not the reported class";

  OptimizeJob random = job;
  random.random_start = true;
  CountingGpuDouble with_init;
  with_init.load_model(tiny_model());
  with_init.report_classes = true;
  NullSink rs;
  const EngineStats rstats = run_optimize(with_init, tiny_model(), random, starts, rs, false);
  EXPECT_EQ(with_init.predicts, rstats.chunks) << "random starts: the first iterate is not the start image";
}

}  // namespace
}  // namespace nudge
