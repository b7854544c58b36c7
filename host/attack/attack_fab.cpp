// FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack"),
// L-inf and L2: from the clean point, linearise the boundary between the label and a target at each iterate, step
// onto it from the iterate and from the clean point, move to their biased combination with extrapolation, and pull
// a misclassified iterate back toward the clean point while it lies outside eps. An entry is broken as soon as a
// misclassified iterate lies within its eps. The maths is fab_rows.h, the loop fab_run.h; this file splits the
// entries into runs (one per target rank) and records what they break.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attack_run_part.h"
#include "attacks.h"
#include "errors.h"
#include "fab_host_device.h"
#include "fab_rows.h"

namespace nudge {

namespace {

// The row code's projection on one row with the host executor, for the closed-form tests and the callers of the
// plain functions below.
float plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d, bool l2) {
  std::vector<double> key(fab_sort_capacity(D)), partial(kFabPartials);
  std::vector<int32_t> idx(key.size());
  const FabScratch s{key.data(), idx.data(), nullptr, nullptr, partial.data()};
  HostLanes b;
  double* norm = nullptr;
  fab_project_row(b, s, w, c, FabArrayBox{lo, hi}, D, l2, d, &norm);
  return static_cast<float>(*norm);
}

}  // namespace

float linf_plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d) {
  return plane_box_projection(w, c, lo, hi, D, d, false);
}

float l2_plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d) {
  return plane_box_projection(w, c, lo, hi, D, d, true);
}

long run_fab_targeted(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const FabConfig& cfg,
                      uint64_t seed, AttackRecord& rec, const AttackProgress& progress) {
  (void)seed;  // every target starts from the clean point; further random restarts are not drawn
  if (cfg.targets < 1 || cfg.targets > set.K - 1)
    throw InputError("FAB-T: " + std::to_string(cfg.targets) + " target classes asked; the model has " +
                     std::to_string(set.K - 1) + " classes besides the label");
  if (cfg.iterations < 1) throw InputError("FAB-T needs at least one iteration");
  long spent = 0;
  for (int t = 0; t < cfg.targets; ++t) {
    std::vector<int> live;
    for (int e : todo)
      if (!rec.broken[e]) live.push_back(e);
    const size_t chunks = std::max<size_t>(1, (live.size() + cfg.chunk - 1) / cfg.chunk);
    for (size_t b0 = 0; b0 < live.size(); b0 += static_cast<size_t>(cfg.chunk)) {
      const std::vector<int> part(live.begin() + b0, live.begin() + std::min(live.size(), b0 + cfg.chunk));
      const int m = static_cast<int>(part.size());
      const RunPart p = gather_run_part(set, part);
      std::vector<int32_t> target(m);
      for (int l = 0; l < m; ++l) target[l] = ranked_target(set, part[l], t);
      FabRunInput in;
      in.m = m;
      in.D = set.D;
      in.K = set.K;
      in.norm = set.norm;
      in.x0 = p.x0.data();
      in.label = p.label.data();
      in.target = target.data();
      in.eps = p.eps.data();
      in.alpha_max = cfg.alpha_max;
      in.eta = cfg.eta;
      in.beta = cfg.beta;
      std::unique_ptr<FabDevice> dev = backend.begin_fab(in);
      if (!dev) dev = make_host_fab_device(backend, in);
      drive_fab(*dev, m, cfg.iterations, in, [&](int it) {
        if (progress)
          progress((t + (static_cast<double>(b0 / cfg.chunk) + static_cast<double>(it) / cfg.iterations) / chunks) / cfg.targets);
      });
      const FabRunResult res = dev->finish();
      record_run(res, part, AttackId::FabT, t + 1, set.D, rec);
      spent += res.cost(cfg.iterations + 1L);
    }
  }
  return spent;
}

}  // namespace nudge
