// APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
// parameter-free attacks"), from the paper: a step size that starts at 2 eps per entry and halves at checkpoints
// when progress stalls, momentum 0.75 after the first step, a restart from the best iterate on halving, and a
// random start on the eps-sphere. Untargeted with the CE or DLR loss; targeted (APGD-T) with the targeted DLR loss
// toward the clean point's 2nd, 3rd, ... most likely classes in turn. The maths is apgd_math.h and apgd_rows.h, the
// loop apgd_run.h; this file splits the entries into runs and records what they break.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "apgd_host_device.h"
#include "apgd_run.h"
#include "attack_run_part.h"
#include "attacks.h"
#include "errors.h"

namespace nudge {

const char* attack_name(AttackId a) {
  switch (a) {
    case AttackId::ApgdCe: return "apgd-ce";
    case AttackId::ApgdT: return "apgd-t";
    case AttackId::FabT: return "fab-t";
    case AttackId::Square: return "square";
    case AttackId::ApgdDlr: return "apgd-dlr";
  }
  return "?";
}

void AttackRecord::resize(int n, int D) {
  broken.assign(n, 0);
  adv.assign(static_cast<size_t>(n) * D, 0.0f);
  attack.assign(n, 0);
  restart.assign(n, -1);
  step.assign(n, -1);
}

float attack_uniform(uint64_t seed, AttackId attack, int restart, uint32_t point, float eps, uint32_t step, uint32_t j) {
  if (step >= kMaxAttackSteps || j >= kMaxAttackDraws)
    throw InternalError("attack_uniform: step " + std::to_string(step) + ", draw " + std::to_string(j) +
                        " beyond the counter's 16 + 18 bits");
  return attack_draw(seed, static_cast<uint32_t>(attack), restart, point, eps, step, j);
}

int ranked_target(const AttackSet& set, int e, int t) {
  int rank = 0;
  for (int k = 0; k < set.K; ++k) {
    const int c = set.ranked[static_cast<size_t>(e) * set.K + k];
    if (c == set.label[e]) continue;
    if (rank++ == t) return c;
  }
  throw InternalError("target rank " + std::to_string(t) + " beyond the model's classes");
}

namespace {

// One run (restart r of target rank t) of the entries `part`, on the backend's device when it has one.
long run_apgd_part(Backend& backend, const AttackSet& set, const std::vector<int>& part, const ApgdConfig& cfg,
                   AttackId id, int t, int r, uint64_t seed, AttackRecord& rec, const std::function<void(int)>& on_iteration) {
  const int m = static_cast<int>(part.size());
  const bool targeted = cfg.loss == ApgdLoss::DlrTargeted;
  const RunPart p = gather_run_part(set, part);
  std::vector<int32_t> target(targeted ? m : 0);
  for (int l = 0; l < m && targeted; ++l) target[l] = ranked_target(set, part[l], t);
  ApgdRunInput in;
  in.m = m;
  in.D = set.D;
  in.K = set.K;
  in.norm = set.norm;
  in.loss = cfg.loss;
  in.x0 = p.x0.data();
  in.label = p.label.data();
  in.target = targeted ? target.data() : nullptr;
  in.eps = p.eps.data();
  in.point = p.point.data();
  in.seed = seed;
  in.attack = static_cast<uint32_t>(id);
  in.key_restart = t * cfg.restarts + r;
  std::unique_ptr<ApgdDevice> dev = backend.begin_apgd(in);
  if (!dev) dev = make_host_apgd_device(backend, in);
  drive_apgd(*dev, m, cfg.iterations, cfg.momentum, cfg.rho, on_iteration);
  const ApgdRunResult res = dev->finish();
  record_run(res, part, id, targeted ? t + 1 : r, set.D, rec);
  return res.cost(cfg.iterations + 1L);
}

}  // namespace

long run_apgd(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const ApgdConfig& cfg,
              AttackId id, uint64_t seed, AttackRecord& rec, const AttackProgress& progress) {
  if (cfg.iterations < 1 || cfg.restarts < 1) throw InputError("APGD needs at least one iteration and one restart");
  const bool targeted = cfg.loss == ApgdLoss::DlrTargeted;
  if (targeted && (cfg.targets < 1 || cfg.targets > set.K - 1))
    throw InputError("APGD-T: " + std::to_string(cfg.targets) + " target classes asked; the model has " +
                     std::to_string(set.K - 1) + " classes besides the label");
  if (cfg.loss != ApgdLoss::Ce && set.K < 4) throw InputError("the DLR loss needs at least 4 classes");
  long spent = 0;
  const int targets = targeted ? cfg.targets : 1;
  for (int t = 0; t < targets; ++t) {
    for (int r = 0; r < cfg.restarts; ++r) {
      std::vector<int> live;
      for (int e : todo)
        if (!rec.broken[e]) live.push_back(e);
      const size_t chunks = std::max<size_t>(1, (live.size() + cfg.chunk - 1) / cfg.chunk);
      const double pass = static_cast<double>(t * cfg.restarts + r), passes = static_cast<double>(targets * cfg.restarts);
      for (size_t b = 0; b < live.size(); b += static_cast<size_t>(cfg.chunk)) {
        const std::vector<int> part(live.begin() + b, live.begin() + std::min(live.size(), b + cfg.chunk));
        spent += run_apgd_part(backend, set, part, cfg, id, t, r, seed, rec, [&](int i) {
          if (progress) progress((pass + (static_cast<double>(b / cfg.chunk) + static_cast<double>(i) / cfg.iterations) / chunks) / passes);
        });
      }
    }
  }
  return spent;
}

}  // namespace nudge
