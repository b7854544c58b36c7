#include "adversarial.h"

#include <algorithm>
#include <cmath>

#include "attacks.h"
#include "counter_normal.h"
#include "engine_chunk.h"
#include "errors.h"
#include "optimize_math.h"

namespace nudge {

AdvMethod parse_adv_method(const std::string& s) {
  if (s == "pgd") return AdvMethod::Pgd;
  if (s == "fgsm") return AdvMethod::Fgsm;
  if (s == "trades") return AdvMethod::Trades;
  throw InputError("--adversarial must be pgd, trades or fgsm (got '" + s + "')");
}

const char* to_string(AdvMethod m) {
  switch (m) {
    case AdvMethod::None: return "none";
    case AdvMethod::Pgd: return "pgd";
    case AdvMethod::Fgsm: return "fgsm";
    case AdvMethod::Trades: return "trades";
  }
  return "?";
}

StepConfig training_attack_step_config(float step_size) {
  StepConfig c;
  c.loss = LossKind::CrossEntropy;
  c.optimizer = InputOptimizer::Sign;
  c.lr = step_size;
  c.norm = Norm::Linf;
  c.early_stop = false;
  c.stop_prob = 1.0f;  // untargeted goal p_y <= 0: never met, so the lowest-loss iterate is reported
  return c;
}

uint64_t training_attack_seed(uint64_t seed, int epoch, int batch) {
  const Philox4 r = counter_random(seed, kStreamAdvTrain, static_cast<uint64_t>(epoch) << 32 | static_cast<uint32_t>(batch), 0);
  return static_cast<uint64_t>(r.v[0]) | static_cast<uint64_t>(r.v[1]) << 32;
}

namespace {

// pgd / fgsm: the optimize chunk with the untargeted job of training_attack_step_config.
void chunk_attack(Backend& backend, const AdversarialConfig& cfg, float eps, const float* x, const int32_t* labels,
                  int n, int D, int K, uint64_t seed, float* x_adv, AttackScratch& s) {
  const size_t nd = static_cast<size_t>(n) * D;
  s.init.resize(nd);
  s.dist.assign(static_cast<size_t>(n) * K, 0.0f);
  s.eps.assign(n, eps);
  s.kind.assign(n, static_cast<int32_t>(TargetKind::Untargeted));
  for (int i = 0; i < n; ++i)
    random_start(seed, static_cast<uint64_t>(i), x + static_cast<size_t>(i) * D, D, eps, Norm::Linf,
                 s.init.data() + static_cast<size_t>(i) * D);
  ChunkInput in;
  in.n = n;
  in.start = x;
  in.init = s.init.data();
  in.target_dist = s.dist.data();
  in.target_kind = s.kind.data();
  in.target_class = labels;
  in.eps = s.eps.data();
  auto chunk = backend.begin_optimize(in, training_attack_step_config(cfg.step_size));
  const int steps = cfg.method == AdvMethod::Fgsm ? 1 : cfg.steps;
  for (int k = 0; k < steps; ++k) chunk->step();
  const ChunkResult r = chunk->finish();
  std::copy(r.best_images.begin(), r.best_images.end(), x_adv);
}

// TRADES: ascend KL(p(x) || p(x')) by sign steps through Backend::input_gradient (the KL loss against the soft
// target p(x) has exactly that gradient), projecting into the ball and [0,1] after each.
void trades_attack(Backend& backend, const AdversarialConfig& cfg, float eps, const float* x, int n, int D, int K,
                   uint64_t seed, float* x_adv, AttackScratch& s) {
  const size_t nd = static_cast<size_t>(n) * D;
  s.clean_probs.resize(static_cast<size_t>(n) * K);
  backend.predict(x, n, s.clean_probs.data());
  s.kind.assign(n, static_cast<int32_t>(TargetKind::Soft));
  s.probs.resize(static_cast<size_t>(n) * K);
  s.loss.resize(n);
  s.grad.resize(nd);
  std::vector<int32_t> cls(n, -1);
  for (int i = 0; i < n; ++i) {
    float* xi = x_adv + static_cast<size_t>(i) * D;
    const float* x0 = x + static_cast<size_t>(i) * D;
    // 0.001 N(0,1) by Box-Muller on two counter uniforms per pair of pixels.
    for (int p = 0; p < D; p += 2) {
      double z[2];
      counter_normal_pair(seed, kStreamAdvTrain, static_cast<uint64_t>(i), static_cast<uint32_t>(p >> 1), z);
      xi[p] = x0[p] + static_cast<float>(0.001 * z[0]);
      if (p + 1 < D) xi[p + 1] = x0[p + 1] + static_cast<float>(0.001 * z[1]);
    }
    project_one(xi, x0, D, eps, Norm::Linf);
  }
  for (int k = 0; k < cfg.steps; ++k) {
    backend.input_gradient(x_adv, n, s.clean_probs.data(), s.kind.data(), cls.data(), LossKind::KL, 0.0f,
                           s.probs.data(), s.loss.data(), s.grad.data());
    for (int i = 0; i < n; ++i) {
      float* xi = x_adv + static_cast<size_t>(i) * D;
      const float* g = s.grad.data() + static_cast<size_t>(i) * D;
      for (int p = 0; p < D; ++p) xi[p] += cfg.step_size * static_cast<float>((g[p] > 0) - (g[p] < 0));
      project_one(xi, x + static_cast<size_t>(i) * D, D, eps, Norm::Linf);
    }
  }
}

}  // namespace

void attack_training_batch(Backend& backend, const AdversarialConfig& cfg, float eps, const float* x,
                           const int32_t* labels, int n, int D, int K, uint64_t seed, float* x_adv,
                           AttackScratch& scratch) {
  switch (cfg.method) {
    case AdvMethod::Pgd:
    case AdvMethod::Fgsm: chunk_attack(backend, cfg, eps, x, labels, n, D, K, seed, x_adv, scratch); return;
    case AdvMethod::Trades: trades_attack(backend, cfg, eps, x, n, D, K, seed, x_adv, scratch); return;
    case AdvMethod::None: break;
  }
  throw InternalError("attack_training_batch without an adversarial method");
}

namespace {

// Which images the model gets right before any attack; counts them into rc.clean_correct.
std::vector<uint8_t> clean_correct(Backend& backend, const float* x, const int32_t* labels, int n, int K,
                                  RobustCheck& rc) {
  std::vector<float> probs(static_cast<size_t>(n) * K);
  backend.predict(x, n, probs.data());
  std::vector<uint8_t> ok(n);
  for (int i = 0; i < n; ++i) {
    const float* p = probs.data() + static_cast<size_t>(i) * K;
    ok[i] = static_cast<int>(std::max_element(p, p + K) - p) == labels[i];
    rc.clean_correct += ok[i];
  }
  return ok;
}

}  // namespace

RobustCheck pgd_robust_check(Backend& backend, const float* x, const int32_t* labels, int n, int D, int K, float eps,
                             int steps, float alpha, int restarts, uint64_t seed) {
  RobustCheck rc;
  rc.count = n;
  if (n == 0) return rc;
  const std::vector<uint8_t> clean_ok = clean_correct(backend, x, labels, n, K, rc);
  // Entries row-major (image, restart), as the optimize engine lays out restarts.
  const int R = std::max(1, restarts);
  const size_t m = static_cast<size_t>(n) * R;
  std::vector<float> start(m * D), init(m * D), dist(m * K, 0.0f), eps_v(m, eps);
  std::vector<int32_t> kind(m, static_cast<int32_t>(TargetKind::Untargeted)), cls(m);
  for (size_t e = 0; e < m; ++e) {
    const float* xi = x + (e / R) * D;
    std::copy(xi, xi + D, start.begin() + e * D);
    cls[e] = labels[e / R];
    random_start(seed, e, xi, D, eps, Norm::Linf, init.data() + e * D);
  }
  ChunkInput in;
  in.n = static_cast<int>(m);
  in.start = start.data();
  in.init = init.data();
  in.target_dist = dist.data();
  in.target_kind = kind.data();
  in.target_class = cls.data();
  in.eps = eps_v.data();
  StepConfig c;
  c.loss = LossKind::CrossEntropy;
  c.optimizer = InputOptimizer::Sign;
  c.lr = alpha;
  c.norm = Norm::Linf;
  c.early_stop = true;  // goal: argmax != label
  auto chunk = backend.begin_optimize(in, c);
  for (int k = 0; k < steps && chunk->active_count() > 0; ++k) chunk->step();
  const ChunkResult r = chunk->finish();
  for (int i = 0; i < n; ++i) {
    bool broken = !clean_ok[i];
    for (int j = 0; j < R; ++j) broken = broken || r.success_step[static_cast<size_t>(i) * R + j] >= 0;
    rc.robust += !broken;
  }
  return rc;
}

RobustCheck apgd_robust_check(Backend& backend, const float* x, const int32_t* labels, int n, int D, int K, float eps,
                              int iterations, int restarts, uint64_t seed) {
  RobustCheck rc;
  rc.count = n;
  if (n == 0) return rc;
  const std::vector<uint8_t> clean_ok = clean_correct(backend, x, labels, n, K, rc);
  AttackSet set;
  set.D = D;
  set.K = K;
  std::vector<int> todo;
  for (int i = 0; i < n; ++i) {
    if (!clean_ok[i]) continue;
    todo.push_back(set.size());
    set.x0.insert(set.x0.end(), x + static_cast<size_t>(i) * D, x + static_cast<size_t>(i + 1) * D);
    set.label.push_back(labels[i]);
    set.eps.push_back(eps);
    set.point.push_back(static_cast<uint32_t>(i));
  }
  AttackRecord rec;
  rec.resize(set.size(), D);
  ApgdConfig cfg;
  cfg.iterations = iterations;
  cfg.restarts = std::max(1, restarts);
  run_apgd(backend, set, todo, cfg, AttackId::ApgdCe, seed, rec);
  for (int e = 0; e < set.size(); ++e) rc.robust += !rec.broken[e];
  return rc;
}

GuardVerdict guard_verdict(const std::vector<double>& h, double drop, const std::vector<double>& attack_accuracy,
                           double gap) {
  GuardVerdict v;
  if (h.empty()) return v;
  v.best_epoch = 0;
  for (size_t e = 1; e + 1 < h.size(); ++e)
    if (h[e] > h[v.best_epoch]) v.best_epoch = static_cast<int>(e);
  if (h.size() == 1) return v;
  v.collapsed = h.back() < h[v.best_epoch] - drop;
  v.overfit = attack_accuracy.size() == h.size() && attack_accuracy.back() - h.back() > gap;
  if (v.overfit && !v.collapsed) {
    v.collapsed = true;
    return v;  // the last epoch is not kept even if it matched the best: it is the overfitted one
  }
  if (!v.collapsed && h.back() > h[v.best_epoch]) v.best_epoch = static_cast<int>(h.size()) - 1;
  return v;
}

}  // namespace nudge
