#include "robustness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "errors.h"
#include "interrupt.h"
#include "progress.h"

namespace nudge {

std::vector<AttackId> parse_attack_list(const std::string& text) {
  if (text == "standard") return {AttackId::ApgdCe, AttackId::ApgdT, AttackId::FabT, AttackId::Square};
  std::vector<AttackId> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    AttackId a;
    if (item == "apgd-ce") a = AttackId::ApgdCe;
    else if (item == "apgd-t") a = AttackId::ApgdT;
    else if (item == "apgd-dlr") a = AttackId::ApgdDlr;
    else if (item == "fab-t") a = AttackId::FabT;
    else if (item == "square") a = AttackId::Square;
    else throw InputError("--attacks: unknown attack '" + item + "' (standard, or a list of apgd-ce, apgd-t, apgd-dlr, fab-t, square)");
    if (std::find(out.begin(), out.end(), a) != out.end()) throw InputError("--attacks: " + item + " is listed twice");
    out.push_back(a);
  }
  if (out.empty()) throw InputError("--attacks: no attack given");
  return out;
}

void recheck_adversarial(Backend& backend, const AttackSet& set, const AttackRecord& rec) {
  std::vector<int> broken;
  for (int e = 0; e < set.size(); ++e)
    if (rec.broken[e]) broken.push_back(e);
  if (broken.empty()) return;
  const int D = set.D, K = set.K;
  std::vector<float> x(broken.size() * D), probs(broken.size() * K);
  for (size_t i = 0; i < broken.size(); ++i)
    std::copy_n(rec.adv.data() + static_cast<size_t>(broken[i]) * D, D, x.data() + i * D);
  backend.predict(x.data(), static_cast<int>(broken.size()), probs.data());
  for (size_t i = 0; i < broken.size(); ++i) {
    const int e = broken[i];
    const float* a = x.data() + i * D;
    const float* x0 = set.x0.data() + static_cast<size_t>(e) * D;
    const std::string who = "re-check of point " + std::to_string(set.point[e]) + " at eps " + std::to_string(set.eps[e]) +
                            " (" + attack_name(static_cast<AttackId>(rec.attack[e])) + ")";
    double size = 0;
    for (int p = 0; p < D; ++p) {
      if (!(a[p] >= 0.0f && a[p] <= 1.0f)) throw InternalError(who + ": pixel " + std::to_string(p) + " is outside [0,1]");
      const double d = std::fabs(static_cast<double>(a[p]) - x0[p]);
      size = set.norm == Norm::L2 ? size + d * d : std::max(size, d);
    }
    if (set.norm == Norm::L2) size = std::sqrt(size);
    if (size > set.eps[e] * (1 + 1e-6) + 1e-7)
      throw InternalError(who + ": the example is " + std::to_string(size) + " from the point, outside the ball");
    const float* p = probs.data() + i * K;
    if (static_cast<int>(std::max_element(p, p + K) - p) == set.label[e])
      throw InternalError(who + ": a fresh forward pass classifies the example as its label");
  }
}

void rank_classes(const float* z, int K, int32_t* order) {
  for (int k = 0; k < K; ++k) order[k] = k;
  std::stable_sort(order, order + K, [&](int a, int b) { return z[a] > z[b]; });
}

namespace {

void run_stage(Backend& backend, const AttackSet& set, const std::vector<int>& todo, AttackId a,
               const RobustnessConfig& cfg, int H, int W, AttackRecord& rec, StageStats& st,
               const AttackProgress& progress) {
  switch (a) {
    case AttackId::ApgdCe: st.cost += run_apgd(backend, set, todo, cfg.apgd_ce, a, cfg.seed, rec, progress); return;
    case AttackId::ApgdT: st.cost += run_apgd(backend, set, todo, cfg.apgd_t, a, cfg.seed, rec, progress); return;
    case AttackId::ApgdDlr: st.cost += run_apgd(backend, set, todo, cfg.apgd_dlr, a, cfg.seed, rec, progress); return;
    case AttackId::Square: st.cost += run_square(backend, set, todo, cfg.square, H, W, cfg.seed, rec, progress); return;
    case AttackId::FabT: st.cost += run_fab_targeted(backend, set, todo, cfg.fab_t, cfg.seed, rec, progress); return;
  }
}

// One slice of the job's points through the whole cascade, into `out` from point `offset` on.
void evaluate_slice(Backend& backend, const float* x, const int32_t* labels, int n, int H, int W, int K,
                    const RobustnessConfig& cfg, const uint32_t* keys, RobustnessResult& out, int offset) {
  const int D = H * W, E = static_cast<int>(cfg.eps.size());
  std::vector<float> logits(static_cast<size_t>(n) * K);
  backend.logit_backprop(x, n, [&](int first, int m, const float* z, float*) {
    std::copy_n(z, static_cast<size_t>(m) * K, logits.data() + static_cast<size_t>(first) * K);
  }, nullptr);
  AttackSet set;
  set.D = D;
  set.K = K;
  set.norm = cfg.norm;
  std::vector<long> entry_of;  // set entry -> result entry
  for (int i = 0; i < n; ++i) {
    const float* z = logits.data() + static_cast<size_t>(i) * K;
    const int pred = static_cast<int>(std::max_element(z, z + K) - z);
    out.clean_pred[offset + i] = pred;
    out.clean_correct += pred == labels[i];
    std::vector<int32_t> order(K);
    rank_classes(z, K, order.data());
    for (int j = 0; j < E; ++j) {
      const long r = (static_cast<long>(offset) + i) * E + j;
      std::copy_n(x + static_cast<size_t>(i) * D, D, out.images.begin() + r * D);
      if (pred != labels[i]) continue;  // misclassified: never attacked, not robust
      out.robust[r] = 1;
      set.x0.insert(set.x0.end(), x + static_cast<size_t>(i) * D, x + static_cast<size_t>(i + 1) * D);
      set.label.push_back(labels[i]);
      set.eps.push_back(cfg.eps[j]);
      set.point.push_back(keys ? keys[i] : static_cast<uint32_t>(offset + i));
      set.ranked.insert(set.ranked.end(), order.begin(), order.end());
      entry_of.push_back(r);
    }
  }
  AttackRecord rec;
  rec.resize(set.size(), D);
  for (size_t s = 0; s < cfg.attacks.size(); ++s) {
    StageStats& st = out.stages[s];
    std::vector<int> todo;
    for (int e = 0; e < set.size(); ++e)
      if (!rec.broken[e]) {
        todo.push_back(e);
        st.attacked[entry_of[e] % E] += 1;  // result entries are point-major: the remainder is the eps index
      }
    const auto t0 = std::chrono::steady_clock::now();
    // The bar counts thousandths of the stage's budget.
    ProgressBar bar(attack_name(cfg.attacks[s]), 1000);
    const std::string detail = std::to_string(todo.size()) + " entries";
    if (cfg.progress) bar.update(0, detail, true);
    run_stage(backend, set, todo, cfg.attacks[s], cfg, H, W, rec, st, [&](double f) {
      // Called between iterations, never inside a parallel region: a stop asked for unwinds from here.
      throw_if_interrupted("the robustness evaluation");
      if (!cfg.progress) return;
      long broken = 0;
      for (int e : todo) broken += rec.broken[e];
      bar.update(static_cast<long>(f * 1000), detail + ", " + std::to_string(broken) + " broken");
    });
    st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    long still = 0;
    for (int e : todo) still += !rec.broken[e];
    for (int e = 0; e < set.size(); ++e)
      if (!rec.broken[e]) st.robust_after[entry_of[e] % E] += 1;
    if (cfg.progress) {
      char line[200];
      std::snprintf(line, sizeof line, "%s: %zu entries attacked, %ld still robust, %.1fs", attack_name(cfg.attacks[s]),
                    todo.size(), still, st.seconds);
      bar.line(line);
    }
  }
  recheck_adversarial(backend, set, rec);
  for (int e = 0; e < set.size(); ++e) {
    if (!rec.broken[e]) continue;
    const long r = entry_of[e];
    out.robust[r] = 0;
    out.attack[r] = rec.attack[e];
    out.restart[r] = rec.restart[e];
    out.step[r] = rec.step[e];
    const float* a = rec.adv.data() + static_cast<size_t>(e) * D;
    const float* x0 = set.x0.data() + static_cast<size_t>(e) * D;
    double sq = 0, mx = 0;
    for (int p = 0; p < D; ++p) {
      const double d = std::fabs(static_cast<double>(a[p]) - x0[p]);
      sq += d * d;
      mx = std::max(mx, d);
    }
    out.linf[r] = static_cast<float>(mx);
    out.l2[r] = static_cast<float>(std::sqrt(sq));
    std::copy_n(a, D, out.images.begin() + r * D);
  }
}

}  // namespace

RobustnessResult evaluate_robustness(Backend& backend, const float* x, const int32_t* labels, int n, int H, int W,
                                     int K, const RobustnessConfig& cfg, const uint32_t* keys) {
  if (cfg.eps.empty()) throw InputError("--eps: give at least one radius");
  for (float e : cfg.eps)
    if (!(e > 0) || !std::isfinite(e)) throw InputError("--eps values must be finite and > 0");
  if (cfg.attacks.empty()) throw InputError("--attacks: no attack given");
  if (cfg.chunk < 1) throw InputError("--chunk must be at least 1");
  for (size_t i = 0; i < cfg.eps.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (cfg.eps[i] == cfg.eps[j]) throw InputError("--eps lists " + std::to_string(cfg.eps[i]) + " twice");
  // The attacks' draws are keyed by (step, draw) in one 32-bit counter (attack_uniform): a random start draws one
  // value per pixel, Square one step per query.
  if (static_cast<int64_t>(H) * W > kMaxAttackDraws)
    throw InputError("nudge robustness takes images of at most " + std::to_string(kMaxAttackDraws) + " pixels; these have " +
                     std::to_string(static_cast<int64_t>(H) * W));
  if (cfg.square.queries > static_cast<int>(kMaxAttackSteps))
    throw InputError("--square-queries: at most " + std::to_string(kMaxAttackSteps) + " (given " +
                     std::to_string(cfg.square.queries) + ")");
  const auto t0 = std::chrono::steady_clock::now();
  const int E = static_cast<int>(cfg.eps.size()), D = H * W;
  RobustnessResult out;
  out.points = n;
  out.classes = K;
  out.D = D;
  out.label.assign(labels, labels + n);
  out.clean_pred.assign(n, -1);
  const size_t entries = static_cast<size_t>(n) * E;
  out.robust.assign(entries, 0);
  out.attack.assign(entries, 0);
  out.restart.assign(entries, -1);
  out.step.assign(entries, -1);
  out.linf.assign(entries, 0.0f);
  out.l2.assign(entries, 0.0f);
  out.images.assign(entries * D, 0.0f);
  out.stages.resize(cfg.attacks.size());
  for (size_t s = 0; s < cfg.attacks.size(); ++s) {
    out.stages[s].attack = cfg.attacks[s];
    out.stages[s].attacked.assign(E, 0);
    out.stages[s].robust_after.assign(E, 0);
  }
  for (int b = 0; b < n; b += cfg.chunk) {
    const int m = std::min(cfg.chunk, n - b);
    evaluate_slice(backend, x + static_cast<size_t>(b) * D, labels + b, m, H, W, K, cfg,
                   keys ? keys + b : nullptr, out, b);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace nudge
