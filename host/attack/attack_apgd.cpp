// APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
// parameter-free attacks"), from the paper: a step size that starts at 2 eps per entry and halves at checkpoints
// when progress stalls, momentum 0.75 after the first step, a restart from the best iterate on halving, and a
// random start on the eps-sphere. Untargeted with the CE or DLR loss; targeted (APGD-T) with the targeted DLR loss
// toward the clean point's 2nd, 3rd, ... most likely classes in turn.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "optimize_math.h"
#include "attacks.h"
#include "counter_rng.h"
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
  uint32_t eps_bits;
  std::memcpy(&eps_bits, &eps, sizeof eps_bits);
  // Streams 256 and up are the attacks' (counter_rng.h's named streams are all below 256).
  const uint32_t stream = 256u | static_cast<uint32_t>(attack) << 8 | static_cast<uint32_t>(restart) << 16;
  const uint64_t index = static_cast<uint64_t>(point) << 32 | eps_bits;
  return uniform_from_bits(counter_random(seed, stream, index, step << 16 | (j >> 2)).v[j & 3]);
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

std::vector<int> apgd_checkpoints(int N) {
  std::vector<int> at;
  // The real-valued recurrence, then w_j = ceil(p_j N); the 1e-9 keeps 0.41 * 100 = 41.000000000000007 at 41.
  double prev = 0, p = 0.22;
  while (p <= 1.0) {
    const int w = std::max(1, static_cast<int>(std::ceil(p * N - 1e-9)));
    if (w > N) break;
    if (at.empty() || w > at.back()) at.push_back(w);
    const double next = p + std::max(p - prev - 0.03, 0.06);
    prev = p;
    p = next;
  }
  return at;
}

bool apgd_halve_step(int increases, int steps, double rho, bool halved_last, float best_loss_last, float best_loss) {
  const bool oscillating = increases < rho * steps;
  const bool stalled = !halved_last && !(best_loss > best_loss_last);
  return oscillating || stalled;
}

namespace {

// One chunk of entries through the whole APGD run (one restart, one target).
class ApgdChunk {
 public:
  ApgdChunk(Backend& backend, const AttackSet& set, const std::vector<int>& entries, const ApgdConfig& cfg, AttackId id,
            int key_restart, int record_restart, const std::vector<int32_t>& target, uint64_t seed, AttackRecord& rec)
      : backend_(backend), set_(set), e_(entries), cfg_(cfg), id_(id), record_restart_(record_restart), target_(target),
        rec_(rec), m_(static_cast<int>(entries.size())), D_(set.D), K_(set.K) {
    const size_t md = static_cast<size_t>(m_) * D_;
    x_.resize(md);
    x_old_.resize(md);
    x_best_.resize(md);
    grad_.resize(md);
    grad_best_.resize(md);
    loss_.assign(m_, 0.0f);
    pred_.assign(m_, 0);
    // Random start on the eps-sphere: t uniform in [-1,1]^D scaled to norm eps, then clamped to [0,1].
    for (int l = 0; l < m_; ++l) {
      const int e = e_[l];
      float* x = row(x_, l);
      const float* x0 = set.x0.data() + static_cast<size_t>(e) * D_;
      double scale = 0;
      for (int p = 0; p < D_; ++p) {
        x[p] = 2.0f * attack_uniform(seed, id, key_restart, set.point[e], set.eps[e], 0, static_cast<uint32_t>(p)) - 1.0f;
        scale = set.norm == Norm::L2 ? scale + static_cast<double>(x[p]) * x[p] : std::max(scale, std::fabs(static_cast<double>(x[p])));
      }
      if (set.norm == Norm::L2) scale = std::sqrt(scale);
      const float f = static_cast<float>(set.eps[e] / std::max(scale, 1e-12));
      for (int p = 0; p < D_; ++p) x[p] = std::min(std::max(x0[p] + f * x[p], 0.0f), 1.0f);
    }
  }

  // on_iteration(i) is told after each of the run's iterations.
  template <class OnIteration>
  long run(OnIteration&& on_iteration) {
    std::vector<int> live(m_);
    for (int l = 0; l < m_; ++l) live[l] = l;
    long spent = 0;
    evaluate(live);
    spent += static_cast<long>(live.size());
    retire_broken(live, 0);
    x_best_ = x_;
    grad_best_ = grad_;
    std::vector<float> loss_best = loss_, prev = loss_, best_last = loss_, eta(m_);
    std::vector<int> increases(m_, 0);
    std::vector<uint8_t> halved_last(m_, 0);
    for (int l = 0; l < m_; ++l) eta[l] = 2.0f * set_.eps[e_[l]];
    const std::vector<int> checkpoints = apgd_checkpoints(cfg_.iterations);
    size_t next_check = 0;
    int since_check = 0;
    std::vector<float> z(D_);
    for (int i = 0; i < cfg_.iterations && !live.empty(); ++i) {
      const float a = i == 0 ? 1.0f : static_cast<float>(cfg_.momentum);
      for (int l : live) {
        const int e = e_[l];
        float *x = row(x_, l), *xo = row(x_old_, l);
        const float* g = row(grad_, l);
        const float* x0 = set_.x0.data() + static_cast<size_t>(e) * D_;
        double gn = 0;
        if (set_.norm == Norm::L2) {
          for (int p = 0; p < D_; ++p) gn += static_cast<double>(g[p]) * g[p];
          gn = std::sqrt(gn) + 1e-12;
        }
        for (int p = 0; p < D_; ++p)
          z[p] = x[p] + eta[l] * (set_.norm == Norm::L2 ? static_cast<float>(g[p] / gn)
                                                         : static_cast<float>((g[p] > 0) - (g[p] < 0)));
        project_one(z.data(), x0, D_, set_.eps[e], set_.norm);
        for (int p = 0; p < D_; ++p) {
          const float next = x[p] + a * (z[p] - x[p]) + (1.0f - a) * (x[p] - xo[p]);
          xo[p] = x[p];
          x[p] = next;
        }
        project_one(x, x0, D_, set_.eps[e], set_.norm);
      }
      evaluate(live);
      spent += static_cast<long>(live.size());
      for (int l : live) {
        if (loss_[l] > loss_best[l]) {
          loss_best[l] = loss_[l];
          std::copy_n(row(x_, l), D_, row(x_best_, l));
          std::copy_n(row(grad_, l), D_, row(grad_best_, l));
        }
        increases[l] += loss_[l] > prev[l];
        prev[l] = loss_[l];
      }
      retire_broken(live, i + 1);
      on_iteration(i + 1);
      ++since_check;
      if (next_check < checkpoints.size() && i + 1 == checkpoints[next_check]) {
        for (int l : live) {
          const bool halve = apgd_halve_step(increases[l], since_check, cfg_.rho, halved_last[l], best_last[l], loss_best[l]);
          halved_last[l] = halve;
          best_last[l] = loss_best[l];
          increases[l] = 0;
          if (!halve) continue;
          eta[l] *= 0.5f;
          std::copy_n(row(x_best_, l), D_, row(x_, l));
          std::copy_n(row(grad_best_, l), D_, row(grad_, l));
          prev[l] = loss_best[l];
        }
        ++next_check;
        since_check = 0;
      }
    }
    return spent;
  }

 private:
  float* row(std::vector<float>& v, int l) { return v.data() + static_cast<size_t>(l) * D_; }

  // Loss, gradient and prediction at x for the local entries `live`.
  void evaluate(const std::vector<int>& live) {
    const int n = static_cast<int>(live.size());
    xb_.resize(static_cast<size_t>(n) * D_);
    gb_.resize(xb_.size());
    for (int i = 0; i < n; ++i) std::copy_n(row(x_, live[i]), D_, xb_.data() + static_cast<size_t>(i) * D_);
    backend_.logit_backprop(xb_.data(), n, [&](int first, int m, const float* logits, float* dz) {
      for (int i = 0; i < m; ++i) {
        const int l = live[first + i], e = e_[l], y = set_.label[e];
        const float* zi = logits + static_cast<size_t>(i) * K_;
        float* di = dz + static_cast<size_t>(i) * K_;
        switch (cfg_.loss) {
          case ApgdLoss::Ce: loss_[l] = attack_ce(zi, K_, y, di); break;
          case ApgdLoss::Dlr: loss_[l] = attack_dlr(zi, K_, y, di); break;
          case ApgdLoss::DlrTargeted: loss_[l] = attack_dlr_targeted(zi, K_, y, target_[l], di); break;
        }
        int top = 0;
        for (int j = 1; j < K_; ++j)
          if (zi[j] > zi[top]) top = j;
        pred_[l] = top;
      }
    }, gb_.data());
    for (int i = 0; i < n; ++i) std::copy_n(gb_.data() + static_cast<size_t>(i) * D_, D_, row(grad_, live[i]));
  }

  // Entries misclassified at their current iterate are broken: recorded, and dropped from `live`.
  void retire_broken(std::vector<int>& live, int step) {
    std::vector<int> still;
    for (int l : live) {
      const int e = e_[l];
      if (pred_[l] == set_.label[e]) {
        still.push_back(l);
        continue;
      }
      rec_.broken[e] = 1;
      rec_.attack[e] = static_cast<int32_t>(id_);
      rec_.restart[e] = record_restart_;
      rec_.step[e] = step;
      std::copy_n(row(x_, l), D_, rec_.adv.data() + static_cast<size_t>(e) * D_);
    }
    live.swap(still);
  }

  Backend& backend_;
  const AttackSet& set_;
  const std::vector<int>& e_;
  const ApgdConfig& cfg_;
  AttackId id_;
  int record_restart_;
  const std::vector<int32_t>& target_;
  AttackRecord& rec_;
  int m_, D_, K_;
  std::vector<float> x_, x_old_, x_best_, grad_, grad_best_, loss_, xb_, gb_;
  std::vector<int> pred_;
};

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
        std::vector<int32_t> target(part.size(), -1);
        for (size_t l = 0; l < part.size(); ++l)
          if (targeted) target[l] = ranked_target(set, part[l], t);
        ApgdChunk chunk(backend, set, part, cfg, id, t * cfg.restarts + r, targeted ? t + 1 : r, target, seed, rec);
        const double c = static_cast<double>(b / cfg.chunk);
        spent += chunk.run([&](int i) {
          if (progress) progress((pass + (c + static_cast<double>(i) / cfg.iterations) / chunks) / passes);
        });
      }
    }
  }
  return spent;
}

}  // namespace nudge
