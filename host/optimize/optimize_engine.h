// The batched input-optimization engine: expands a job into rows and entries, runs them chunk by chunk on any
// Backend, keeps per row the best entry, and streams the rows to a sink. The engine holds at most two chunks on the
// backend (the one computing and the next one, uploading) and three on the host, so a job can have millions of rows.
#pragma once
#include <string>
#include <vector>

#include "backend.h"
#include "model.h"
#include "optimize_job.h"
#include "start_images.h"

namespace nudge {

struct RowResult {
  long row = 0;           // position in the output
  long source = 0;        // start image number within the job
  std::string source_name;
  long dataset_index = -1;
  int label = -1;         // true label of the start image, -1 unknown
  int start_class = -1;   // the model's class for the start image
  RowTarget target;
  bool success = false;
  int success_step = -1;  // updates before the goal was first met
  int updates = 0;        // updates applied to the winning entry
  float loss = 0;
  float eps = 0;          // radius of the winning entry (0 without a ball)
  int restart = 0;
  float linf = 0, l2 = 0; // distance of the reported image to its start
  std::vector<float> probs;
  // The judge's verdict on the reported image (judge_class -1: no judge), filled in before the row is journaled.
  int judge_class = -1;
  float judge_p_target = 0;  // the judge's probability of the row's one-hot target (0 for other targets)
  const float* start = nullptr;  // valid during RowSink::row only
  const float* image = nullptr;
};

// Called on a worker thread of the engine, one call at a time, in row order.
class RowSink {
 public:
  virtual ~RowSink() = default;
  virtual void row(const RowResult& r) = 0;
  // A chunk's rows at once, in order; a sink may override it to work on them in parallel. image_steps: the updates
  // the chunk applied, summed over all its entries (a journal keeps it, so that a resumed job counts them all).
  virtual void rows(const std::vector<RowResult>& batch, long image_steps) {
    (void)image_steps;
    for (const RowResult& r : batch) row(r);
  }
};

struct EngineStats {
  long rows = 0, entries = 0, chunks = 0;
  long image_steps = 0;   // updates applied, summed over entries (one forward, backward and update each)
  double seconds = 0;     // wall time of the optimization, start-image generation included
  int entries_per_row = 1;
  std::string path;       // which chunk implementation ran: "layers", "fused" or the host-regularised one
};

// The rows of a job that one run computes: [first, end), end -1 meaning the last row. A shard, a rank of an MPI job
// or a resumed job runs a part; every row's result is the same as in a whole run.
struct RowRange {
  long first = 0, end = -1;
};

// Runs the job; `progress` draws a bar on stderr. Throws InputError for a job that fails validation.
// `ensemble`: further models (same input shape and classes) that every image must convince as well; with them, or
// with any regulariser, the job runs on the host-regularised chunk (regularized_chunk.h).
EngineStats run_optimize(Backend& backend, const Model& model, const OptimizeJob& job, const StartImages& starts,
                         RowSink& sink, bool progress, const std::vector<Backend*>& ensemble = {},
                         RowRange range = {});

}  // namespace nudge
