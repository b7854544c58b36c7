#include "optimize_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <new>

#include "counter_rng.h"
#include "input_step.h"
#include "progress.h"
#include "regularized_chunk.h"

namespace nudge {

namespace {

// Whether entry a beats entry b for the same row: success first (earlier is better), then lower loss.
bool better(const ChunkResult& r, int a, int b) {
  const bool sa = r.success_step[a] >= 0, sb = r.success_step[b] >= 0;
  if (sa != sb) return sa;
  if (sa && r.success_step[a] != r.success_step[b]) return r.success_step[a] < r.success_step[b];
  return r.best_loss[a] < r.best_loss[b];
}

}  // namespace

EngineStats run_optimize(Backend& backend, const Model& model, const OptimizeJob& job, const StartImages& starts,
                         RowSink& sink, bool progress, const std::vector<Backend*>& ensemble) {
  const int K = model.arch.num_classes();
  const int D = model.arch.input.size();
  validate_job(job, K);
  const auto t0 = std::chrono::steady_clock::now();

  const std::vector<float> eps_values = job.eps.empty() ? std::vector<float>{0.0f} : job.eps;
  const int per_row = static_cast<int>(eps_values.size()) * job.restarts;
  // Every start image gets the same number of targets (1, or K-1 for "other").
  const int targets_per_source = static_cast<int>(targets_for(job, 0, 0, K).size());
  const long rows = starts.count() * targets_per_source;
  const int chunk_entries = std::max(per_row, job.chunk > 0 ? job.chunk : backend.preferred_chunk());
  long rows_per_chunk = std::max(1, chunk_entries / per_row);

  EngineStats stats;
  stats.rows = rows;
  stats.entries = rows * per_row;
  stats.entries_per_row = per_row;
  const bool regularized = job.reg.any() || !ensemble.empty();
  std::vector<Backend*> models{&backend};
  models.insert(models.end(), ensemble.begin(), ensemble.end());
  stats.path = regularized ? "host-regularized (" + std::to_string(models.size()) + " model" +
                                 (models.size() > 1 ? "s" : "") + ")"
                           : "";
  ProgressBar bar("optimize", std::max(1L, stats.entries * std::max(job.steps, 1)));

  std::vector<float> x0, init, dist, eps, start_of_row, source_img(D), start_probs;
  std::vector<int32_t> kind, cls;
  std::vector<RowTarget> row_target;
  std::vector<int> row_start_class;
  for (long first = 0; first < rows;) {
    const long nrows = std::min(rows_per_chunk, rows - first);
    const int n = static_cast<int>(nrows * per_row);
    x0.resize(static_cast<size_t>(n) * D);
    init.resize(job.random_start ? x0.size() : 0);
    dist.assign(static_cast<size_t>(n) * K, 0.0f);
    eps.resize(n);
    kind.resize(n);
    cls.resize(n);
    row_target.resize(nrows);
    start_of_row.resize(static_cast<size_t>(nrows) * D);
    long cached_source = -1;
    for (long r = 0; r < nrows; ++r) {
      const long row = first + r, source = row / targets_per_source;
      if (source != cached_source) {
        starts.fill(source, source_img.data());
        cached_source = source;
      }
      std::copy(source_img.begin(), source_img.end(), start_of_row.begin() + r * D);
      const RowTarget t = targets_for(job, source, starts.label(source), K)[row % targets_per_source];
      row_target[r] = t;
      for (int e = 0; e < per_row; ++e) {
        const size_t i = static_cast<size_t>(r) * per_row + e;
        std::copy(source_img.begin(), source_img.end(), x0.begin() + i * D);
        eps[i] = eps_values[e / job.restarts];
        kind[i] = static_cast<int32_t>(t.kind);
        cls[i] = t.cls;
        float* d = dist.data() + i * K;
        if (t.kind == TargetKind::Soft) std::copy(job.target_dist.begin(), job.target_dist.end(), d);
        else if (t.kind == TargetKind::OneHot) d[t.cls] = 1.0f;
        if (job.random_start) {
          // Uniform in the L-inf box of radius eps, then projected: a pure function of (seed, global entry).
          const uint64_t id = static_cast<uint64_t>(row) * per_row + e;
          float* x = init.data() + i * D;
          for (int p = 0; p < D; ++p)
            x[p] = source_img[p] + eps[i] * (2.0f * counter_uniform(job.seed, kStreamRandomStart, id, p) - 1.0f);
          project_one(x, source_img.data(), D, eps[i], job.step.norm);
        }
      }
    }
    // The model's verdict on the start images, for the "classified correctly before" denominator.
    start_probs.resize(static_cast<size_t>(nrows) * K);
    backend.predict(start_of_row.data(), static_cast<int>(nrows), start_probs.data());
    row_start_class.resize(nrows);
    for (long r = 0; r < nrows; ++r) {
      const float* p = start_probs.data() + r * K;
      row_start_class[r] = static_cast<int>(std::max_element(p, p + K) - p);
    }

    ChunkInput in;
    in.n = n;
    in.start = x0.data();
    in.init = job.random_start ? init.data() : nullptr;
    in.target_dist = dist.data();
    in.target_kind = kind.data();
    in.target_class = cls.data();
    in.eps = eps.data();
    std::unique_ptr<OptimizeChunk> chunk;
    try {
      chunk = regularized ? make_regularized_chunk(models, model.arch.input.h, model.arch.input.w, K, in, job.step,
                                                   job.reg, job.seed, static_cast<uint64_t>(first) * per_row)
                          : backend.begin_optimize(in, job.step);
    } catch (const std::bad_alloc& e) {
      // A device out of memory for this chunk: halve it and carry on (results do not depend on the chunk size).
      if (nrows == 1) throw;
      rows_per_chunk = std::max(1L, nrows / 2);
      bar.line("nudge: " + std::string(e.what()) + "; retrying with chunks of " + std::to_string(rows_per_chunk * per_row) +
               " entries");
      continue;
    }
    for (int s = 0; s < job.steps && chunk->active_count() > 0; ++s) {
      chunk->step();
      if (progress) {
        char detail[128];
        std::snprintf(detail, sizeof detail, "chunk %ld/%ld step %d/%d, %d active", stats.chunks + 1,
                      (rows + rows_per_chunk - 1) / rows_per_chunk, s + 1, job.steps, chunk->active_count());
        bar.update(first * per_row * job.steps + static_cast<long>(n) * (s + 1), detail);
      }
    }
    const ChunkResult res = chunk->finish();
    ++stats.chunks;
    if (!regularized) stats.path = backend.optimize_path_used();
    for (int i = 0; i < n; ++i) stats.image_steps += res.updates[i];

    for (long r = 0; r < nrows; ++r) {
      int best = static_cast<int>(r * per_row);
      for (int e = 1; e < per_row; ++e)
        if (better(res, static_cast<int>(r * per_row + e), best)) best = static_cast<int>(r * per_row + e);
      RowResult out;
      out.row = first + r;
      out.source = out.row / targets_per_source;
      out.source_name = starts.name(out.source);
      out.dataset_index = starts.dataset_index(out.source);
      out.label = starts.label(out.source);
      out.start_class = row_start_class[r];
      out.target = row_target[r];
      out.success = res.success_step[best] >= 0;
      out.success_step = res.success_step[best];
      out.updates = res.updates[best];
      out.loss = res.best_loss[best];
      out.eps = job.eps.empty() ? 0.0f : eps[best];
      out.restart = (best - static_cast<int>(r * per_row)) % job.restarts;
      out.probs.assign(res.best_probs.begin() + static_cast<size_t>(best) * K, res.best_probs.begin() + static_cast<size_t>(best + 1) * K);
      out.start = start_of_row.data() + r * D;
      out.image = res.best_images.data() + static_cast<size_t>(best) * D;
      double l2 = 0;
      for (int p = 0; p < D; ++p) {
        const double d = std::fabs(static_cast<double>(out.image[p]) - out.start[p]);
        out.linf = std::max(out.linf, static_cast<float>(d));
        l2 += d * d;
      }
      out.l2 = static_cast<float>(std::sqrt(l2));
      sink.row(out);
    }
    first += nrows;
  }
  bar.finish();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace nudge
