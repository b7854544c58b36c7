#include "engine_chunk.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "counter_rng.h"
#include "optimize_math.h"
#include "parallel_errors.h"

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

void random_start(uint64_t seed, uint64_t entry, const float* x0, int D, float eps, Norm norm, float* x) {
  counter_uniform_fill(seed, kStreamRandomStart, entry, D, x);
  for (int p = 0; p < D; ++p) x[p] = x0[p] + eps * (2.0f * x[p] - 1.0f);
  project_one(x, x0, D, eps, norm);
}

JobLayout job_layout(const OptimizeJob& job, const StartImages& starts, int D, int K) {
  JobLayout l;
  l.D = D;
  l.K = K;
  l.eps_values = job.eps.empty() ? std::vector<float>{0.0f} : job.eps;
  l.per_row = static_cast<int>(l.eps_values.size()) * job.restarts;
  // Every start image gets the same number of targets (1, or K-1 for "other").
  l.targets_per_source = static_cast<int>(targets_for(job, 0, 0, K).size());
  l.rows = starts.count() * l.targets_per_source;
  return l;
}

ChunkInput PreparedChunk::input(bool random_start) const {
  ChunkInput in;
  in.n = n;
  in.start = x0.data();
  in.init = random_start ? init.data() : nullptr;
  in.target_dist = dist.data();
  in.target_kind = kind.data();
  in.target_class = cls.data();
  in.eps = eps.data();
  in.generated = generated;
  return in;
}

void prepare_chunk(const OptimizeJob& job, const StartImages& starts, const JobLayout& l, long first, long nrows,
                   int threads, PreparedChunk& c) {
  const int D = l.D, K = l.K, per_row = l.per_row, tps = l.targets_per_source;
  c.first = first;
  c.nrows = nrows;
  c.n = static_cast<int>(nrows * per_row);
  const size_t n = static_cast<size_t>(c.n);
  c.x0.resize(n * D);
  c.init.resize(job.random_start ? n * D : 0);
  c.dist.assign(n * K, 0.0f);
  c.eps.resize(n);
  c.kind.resize(n);
  c.cls.resize(n);
  c.start_of_row.resize(static_cast<size_t>(nrows) * D);
  c.row_target.resize(nrows);
  c.start_class.clear();
  c.generated = GeneratedStarts{};
  if (job.init == InitKind::Noise || job.init == InitKind::Gray) {
    c.generated.kind = job.init == InitKind::Noise ? GeneratedStarts::Kind::Noise : GeneratedStarts::Kind::Gray;
    c.generated.seed = job.seed;
    c.generated.gray = job.gray_value;
    c.generated.first_row = first;
    c.generated.entries_per_row = per_row;
    c.generated.rows_per_source = tps;
  }

  // Each start image is made once, into its first row in the chunk; its other rows (targets) copy it.
  const long first_source = first / tps, last_source = (first + nrows - 1) / tps;
  ParallelErrors errors;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (long source = first_source; source <= last_source; ++source) errors.run([&] {
      const long r = std::max(first, source * tps) - first;
      starts.fill(source, c.start_of_row.data() + r * D);
    });
#pragma omp for schedule(static)
    for (long r = 0; r < nrows; ++r) errors.run([&] {
      const long row = first + r, source = row / tps;
      const float* img = c.start_of_row.data() + (std::max(first, source * tps) - first) * D;
      if (img != c.start_of_row.data() + r * D) std::copy(img, img + D, c.start_of_row.begin() + r * D);
      const RowTarget t = targets_for(job, source, starts.label(source), K)[row % tps];
      c.row_target[r] = t;
      for (int e = 0; e < per_row; ++e) {
        const size_t i = static_cast<size_t>(r) * per_row + e;
        std::copy(img, img + D, c.x0.begin() + i * D);
        c.eps[i] = l.eps_values[e / job.restarts];
        c.kind[i] = static_cast<int32_t>(t.kind);
        c.cls[i] = t.cls;
        float* d = c.dist.data() + i * K;
        if (t.kind == TargetKind::Soft) std::copy(job.target_dist.begin(), job.target_dist.end(), d);
        else if (t.kind == TargetKind::OneHot) d[t.cls] = 1.0f;
        if (job.random_start)
          random_start(job.seed, static_cast<uint64_t>(row) * per_row + e, img, D, c.eps[i], job.step.norm,
                       c.init.data() + i * D);
      }
    });
  }
  errors.rethrow();
}

void emit_rows(const OptimizeJob& job, const StartImages& starts, const JobLayout& l, const PreparedChunk& c,
               const ChunkResult& res, long image_steps, RowSink& sink, int threads) {
  const int D = l.D, K = l.K, per_row = l.per_row;
  std::vector<RowResult> out(c.nrows);
  ParallelErrors errors;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long r = 0; r < c.nrows; ++r) errors.run([&] {
    int b = static_cast<int>(r * per_row);
    for (int e = 1; e < per_row; ++e)
      if (better(res, static_cast<int>(r * per_row + e), b)) b = static_cast<int>(r * per_row + e);
    RowResult& o = out[r];
    o.row = c.first + r;
    o.source = o.row / l.targets_per_source;
    o.source_name = starts.name(o.source);
    o.dataset_index = starts.dataset_index(o.source);
    o.label = starts.label(o.source);
    o.start_class = c.start_class[r];
    o.target = c.row_target[r];
    o.success = res.success_step[b] >= 0;
    o.success_step = res.success_step[b];
    o.updates = res.updates[b];
    o.loss = res.best_loss[b];
    o.eps = job.eps.empty() ? 0.0f : c.eps[b];
    o.restart = (b - static_cast<int>(r * per_row)) % job.restarts;
    o.probs.assign(res.best_probs.begin() + static_cast<size_t>(b) * K,
                   res.best_probs.begin() + static_cast<size_t>(b + 1) * K);
    o.start = c.start_of_row.data() + r * D;
    o.image = res.best_images.data() + static_cast<size_t>(b) * D;
    double sq = 0;
    float mx = 0;
    for (int p = 0; p < D; ++p) {
      const double d = std::fabs(static_cast<double>(o.image[p]) - o.start[p]);
      mx = std::max(mx, static_cast<float>(d));
      sq += d * d;
    }
    o.linf = mx;
    o.l2 = static_cast<float>(std::sqrt(sq));
  });
  errors.rethrow();
  sink.rows(out, image_steps);
}

}  // namespace nudge
