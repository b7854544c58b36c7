// The engine's schedule. Three things happen at once, each on its own thread, so that a GPU never waits for the
// host (tools/bench/bench_engine_host measures the host side alone):
//   - a worker prepares the inputs of chunk k+1 (start images, random starts, targets),
//   - this thread drives the backend: chunk k+1 is begun (on a GPU its upload then runs in the background) before
//     chunk k steps, and chunk k is finished after its steps,
//   - a writer turns chunk k-1's results into rows for the sink.
// So at most two chunks live on the backend at once; if the second does not fit, it is begun after the first is
// finished, and only a chunk that does not fit alone is halved. Results depend on none of this (every value is a
// pure function of the job and the entry's position).
#include "optimize_engine.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <new>

#include "engine_chunk.h"
#include "progress.h"
#include "regularized_chunk.h"
#include "serial_worker.h"
#include "errors.h"
#include "interrupt.h"

namespace nudge {

namespace {

struct LiveChunk {
  PreparedChunk prepared;
  std::unique_ptr<OptimizeChunk> chunk;
};

// Chunks' host buffers, handed back by the writer and reused by the preparer (a handful are in use at once: one
// being prepared, up to two on the backend, up to two waiting for or in the writer).
class ChunkPool {
 public:
  PreparedChunk take() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return {};
    PreparedChunk c = std::move(free_.back());
    free_.pop_back();
    return c;
  }
  void give(PreparedChunk&& c) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(c));
  }

 private:
  std::mutex mutex_;
  std::vector<PreparedChunk> free_;
};

}  // namespace

EngineStats run_optimize(Backend& backend, const Model& model, const OptimizeJob& job, const StartImages& starts,
                         RowSink& sink, bool progress, const std::vector<Backend*>& ensemble, RowRange range) {
  const int K = model.arch.num_classes();
  const int D = model.arch.input.size();
  validate_job(job, K);
  const auto t0 = std::chrono::steady_clock::now();

  const JobLayout layout = job_layout(job, starts, D, K);
  const long begin_row = range.first, rows = range.end < 0 ? layout.rows : range.end;
  if (begin_row < 0 || begin_row > rows || rows > layout.rows)
    throw InternalError("run_optimize: rows [" + std::to_string(begin_row) + ", " + std::to_string(rows) +
                        ") outside the job's " + std::to_string(layout.rows));
  const int per_row = layout.per_row;
  const int chunk_entries = std::max(per_row, job.chunk > 0 ? job.chunk : backend.preferred_chunk());
  long rows_per_chunk = std::max(1, chunk_entries / per_row);
  // Host threads for preparing and emitting chunks: all of them beside a GPU; one beside the CPU backend, whose
  // own threads already fill the cores.
  const int host_threads = backend.is_gpu() ? std::max(1, omp_get_max_threads()) : 1;

  EngineStats stats;
  stats.rows = rows - begin_row;
  stats.entries = stats.rows * per_row;
  stats.entries_per_row = per_row;
  const bool regularized = job.reg.any() || !ensemble.empty();
  std::vector<Backend*> models{&backend};
  models.insert(models.end(), ensemble.begin(), ensemble.end());
  stats.path = regularized ? "host-regularized (" + std::to_string(models.size()) + " model" +
                                 (models.size() > 1 ? "s" : "") + ")"
                           : "";
  ProgressBar bar("optimize", std::max(1L, stats.entries * std::max(job.steps, 1)));

  ChunkPool pool;
  // Rows [first, first + nrows); the caller reads rows_per_chunk on this thread, so the worker never does.
  auto prepare = [&](long first, long nrows) {
    PreparedChunk c = pool.take();
    prepare_chunk(job, starts, layout, first, nrows, host_threads, c);
    return c;
  };
  auto rows_from = [&](long first) { return std::min(rows_per_chunk, rows - first); };
  auto begin = [&](PreparedChunk& p) {
    const ChunkInput in = p.input(job.random_start);
    return regularized ? make_regularized_chunk(models, model.arch.input.h, model.arch.input.w, K, in, job.step,
                                                job.reg, job.seed, static_cast<uint64_t>(p.first) * per_row)
                       : backend.begin_optimize(in, job.step);
  };
  // Declared before the workers, which finish their queued tasks when destroyed (also when an exception unwinds).
  std::unique_ptr<LiveChunk> current;
  std::deque<std::future<void>> writing;  // queued on the writer in row order
  std::atomic<bool> write_failed{false};
  std::future<PreparedChunk> preparing;
  SerialWorker preparer, writer;

  // The model's verdict on each row's start image, for the "classified correctly before" denominator: from the
  // chunk's own first evaluation where it reports one (a GPU chunk without random starts evaluates the start image
  // first anyway), else from a predict pass (the CPU backend, random starts, the host-regularised chunk). Either is
  // the model's argmax on the very start image.
  auto set_start_classes = [&](PreparedChunk& lp, const ChunkResult& res) {
    lp.start_class.resize(lp.nrows);
    const bool reported =
        res.start_class.size() == static_cast<size_t>(lp.n) &&
        std::all_of(res.start_class.begin(), res.start_class.end(), [K](int32_t c) { return c >= 0 && c < K; });
    if (reported) {
      for (long r = 0; r < lp.nrows; ++r) lp.start_class[r] = res.start_class[static_cast<size_t>(r) * per_row];
      return;
    }
    std::vector<float> start_probs(static_cast<size_t>(lp.nrows) * K);
    backend.predict(lp.start_of_row.data(), static_cast<int>(lp.nrows), start_probs.data());
    for (long r = 0; r < lp.nrows; ++r) {
      const float* q = start_probs.data() + r * K;
      lp.start_class[r] = static_cast<int>(std::max_element(q, q + K) - q);
    }
  };

  // Finishes the current chunk and hands its rows to the writer (after the previous chunk's rows).
  auto retire_current = [&] {
    if (!regularized) stats.path = current->chunk->path();
    ChunkResult res = current->chunk->finish();
    current->chunk.reset();  // its device memory is free from here
    set_start_classes(current->prepared, res);
    ++stats.chunks;
    long chunk_steps = 0;
    for (int i = 0; i < current->prepared.n; ++i) chunk_steps += res.updates[i];
    stats.image_steps += chunk_steps;
    writing.push_back(writer.submit([&, chunk_steps, p = std::move(current->prepared), r = std::move(res)]() mutable {
      if (write_failed) return;  // rows after a failed one are not written
      try {
        emit_rows(job, starts, layout, p, r, chunk_steps, sink, host_threads);
      } catch (...) {
        write_failed = true;
        throw;
      }
      pool.give(std::move(p));
    }));
    current.reset();
    // Two chunks may wait for the writer (their results are held in host memory); beyond that the backend waits.
    // A finished write is collected at once, so that its failure stops the job here.
    while (!writing.empty() && (writing.size() > 2 || writing.front().wait_for(std::chrono::seconds(0)) ==
                                                          std::future_status::ready)) {
      writing.front().get();
      writing.pop_front();
    }
  };

  // Begins a prepared chunk and sends the following rows to the preparer.
  // Out of memory while another chunk is live: returns null and keeps the chunk in `deferred`, to begin once that
  // one is finished. Out of memory alone (a device short of memory): halves the chunk and carries on.
  std::unique_ptr<PreparedChunk> deferred;
  auto start = [&](PreparedChunk p, bool other_live) -> std::unique_ptr<LiveChunk> {
    // The chunk is begun from the inputs' final home: a backend may read them until the chunk finishes.
    auto live = std::make_unique<LiveChunk>(LiveChunk{std::move(p), nullptr});
    while (!live->chunk) {
      try {
        live->chunk = begin(live->prepared);
      } catch (const std::bad_alloc& e) {
        if (other_live) {
          deferred = std::make_unique<PreparedChunk>(std::move(live->prepared));
          return nullptr;
        }
        const PreparedChunk& q = live->prepared;
        if (q.nrows == 1) throw;
        rows_per_chunk = std::max(1L, q.nrows / 2);
        bar.line("nudge: " + std::string(e.what()) + "; retrying with chunks of " +
                 std::to_string(rows_per_chunk * per_row) + " entries");
        live->prepared = prepare(q.first, rows_from(q.first));
      }
    }
    PreparedChunk& lp = live->prepared;
    const long next_first = lp.first + lp.nrows;
    if (next_first < rows) {
      const long nrows = rows_from(next_first);
      preparing = preparer.submit([&, next_first, nrows] { return prepare(next_first, nrows); });
    }
    return live;
  };

  if (rows > begin_row) current = start(prepare(begin_row, rows_from(begin_row)), false);
  while (current) {
    // The next chunk is begun before this one steps, so that its upload (on a GPU) runs during these steps.
    std::unique_ptr<LiveChunk> next;
    if (preparing.valid()) next = start(preparing.get(), true);

    OptimizeChunk& chunk = *current->chunk;
    const long first = current->prepared.first;
    const int n = current->prepared.n;
    for (int s = 0; s < job.steps && chunk.active_count() > 0; ++s) {
      throw_if_interrupted("the optimize job");
      chunk.step();
      if (progress) {
        char detail[128];
        std::snprintf(detail, sizeof detail, "chunk %ld/%ld step %d/%d, %d active", stats.chunks + 1,
                      (rows - begin_row + rows_per_chunk - 1) / rows_per_chunk, s + 1, job.steps, chunk.active_count());
        bar.update((first - begin_row) * per_row * job.steps + static_cast<long>(n) * (s + 1), detail);
      }
    }
    retire_current();
    if (!next && deferred) {
      PreparedChunk p = std::move(*deferred);
      deferred.reset();
      next = start(std::move(p), false);
    }
    current = std::move(next);
  }
  for (auto& w : writing) w.get();
  bar.finish();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace nudge
