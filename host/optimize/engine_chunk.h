// The host side of one chunk of an optimize job: its inputs, built from the job (prepare_chunk), and its results,
// turned into rows for the sink (emit_rows). Kept apart from the engine's scheduling (optimize_engine.cpp) because
// each runs on its own thread while the backend computes a neighbouring chunk.
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"
#include "optimize_engine.h"
#include "optimize_job.h"
#include "start_images.h"

namespace nudge {

// What is the same for every chunk of a job.
struct JobLayout {
  int D = 0, K = 0;
  std::vector<float> eps_values;  // one entry per radius ({0} without a ball)
  int per_row = 1;                // entries per row: radii x restarts
  int targets_per_source = 1;     // rows per start image (1, or K-1 for "other")
  long rows = 0;
};
JobLayout job_layout(const OptimizeJob& job, const StartImages& starts, int D, int K);

// Rows [first, first + nrows) of the job, laid out for Backend::begin_optimize.
struct PreparedChunk {
  long first = 0, nrows = 0;
  int n = 0;                          // entries: nrows * per_row
  std::vector<float> x0, init, dist, eps;
  std::vector<int32_t> kind, cls;
  std::vector<float> start_of_row;    // [nrows, D]
  std::vector<RowTarget> row_target;  // [nrows]
  std::vector<int> start_class;       // [nrows] the model's class for each start image (set by the engine)
  GeneratedStarts generated;          // noise and gray starts: how a GPU makes x0 itself (no upload)

  ChunkInput input(bool random_start) const;
};

// Every value is a pure function of the job and the entry's global position (start images and random starts come
// from the counter generator), so chunking and `threads` never change them. `c` is overwritten; its buffers are
// reused, since fresh ones cost a page fault per 4 KiB (tens of MB per chunk).
void prepare_chunk(const OptimizeJob& job, const StartImages& starts, const JobLayout& layout, long first, long nrows,
                   int threads, PreparedChunk& c);

// Uniform in the L-inf box of radius eps around x0, then projected into the ball (and [0,1]): a pure function of
// (seed, global entry), four pixels per Philox block as the noise images are.
void random_start(uint64_t seed, uint64_t entry, const float* x0, int D, float eps, Norm norm, float* x);

// Picks each row's best entry and hands the rows to `sink`, in row order, with the updates the chunk applied.
void emit_rows(const OptimizeJob& job, const StartImages& starts, const JobLayout& layout, const PreparedChunk& chunk,
               const ChunkResult& result, long image_steps, RowSink& sink, int threads);

}  // namespace nudge
