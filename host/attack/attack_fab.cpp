// FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack"),
// L-inf and L2, from the paper: at each iterate x_i, linearise the boundary between the label y and the target t,
// g(x) = z_y(x) - z_t(x) ~ g_i + w.(x - x_i), project both x_i and the clean point x_0 onto that hyperplane within
// the box [0,1]^D (minimal steps d_i and d_0 in the ball's norm), and move to the biased combination
//   x_{i+1} = clip((1 - a)(x_i + eta d_i) + a (x_0 + eta d_0)),  a = min(|d_i| / (|d_i| + |d_0|), alpha_max),
// extrapolating by eta = 1.05. Once x_{i+1} is misclassified it is stepped back toward x_0 by
// x_{i+1} = (1 - beta) x_0 + beta x_{i+1}, beta = 0.9, to shrink it. An entry is broken as soon as a misclassified
// iterate lies within its eps; FAB is a minimum-norm attack, so it keeps shrinking until then or until the budget.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "attacks.h"
#include "errors.h"

namespace nudge {

float linf_plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d) {
  // min t s.t. w.d = c, |d_j| <= t, lo_j <= d_j <= hi_j. Moving d_j toward sign(c w_j) adds |w_j| per unit, up to
  // its box limit b_j; for a given t the plane can be reached iff sum_j |w_j| min(t, b_j) >= |c|, which grows with
  // t: find the smallest such t among the sorted b_j and solve the linear piece in between.
  const double target = std::fabs(c);
  std::vector<double> b(D), a(D);
  // (limit, coordinate) pairs in (limit, coordinate) order. In an image box most limits are exactly 0 or 1 (pixels
  // at 0 or 1), so those two groups are laid out in coordinate order as they come and only the others are sorted:
  // the same order as sorting all of them, at a fraction of the cost.
  std::vector<std::pair<double, int>> order, ones;
  order.reserve(D);
  for (int j = 0; j < D; ++j) {
    const double dir = (c >= 0) == (w[j] >= 0) ? 1.0 : -1.0;
    a[j] = std::fabs(static_cast<double>(w[j]));
    b[j] = std::max(0.0, static_cast<double>(dir > 0 ? hi[j] : -lo[j]));
    if (b[j] == 0.0) order.emplace_back(b[j], j);
  }
  const size_t zeros = order.size();
  double top = 0;
  for (int j = 0; j < D; ++j) top = std::max(top, b[j]);
  for (int j = 0; j < D; ++j)
    if (b[j] != 0.0) (b[j] == top ? ones : order).emplace_back(b[j], j);
  std::sort(order.begin() + static_cast<std::ptrdiff_t>(zeros), order.end());
  order.insert(order.end(), ones.begin(), ones.end());
  // Below the k-th smallest limit, coordinates order[k..] move freely: reach(t) = capped + t * free_slope.
  double capped = 0, free_slope = 0;
  for (double v : a) free_slope += v;
  double t = -1;
  for (int k = 0; k < D; ++k) {
    const int j = order[k].second;
    const double reach_at_bj = capped + b[j] * free_slope;
    if (reach_at_bj >= target) {
      t = free_slope > 0 ? (target - capped) / free_slope : b[j];
      break;
    }
    capped += a[j] * b[j];
    free_slope -= a[j];
  }
  const bool reachable = t >= 0;
  for (int j = 0; j < D; ++j) {
    if (w[j] == 0.0f || target == 0) {
      d[j] = 0.0f;
      continue;
    }
    const double dir = (c >= 0) == (w[j] >= 0) ? 1.0 : -1.0;
    // Unreachable within the box: every coordinate goes to its limit, the closest the box allows.
    const double len = reachable ? std::min(t, b[j]) : b[j];
    d[j] = static_cast<float>(dir * len);
  }
  return static_cast<float>(reachable ? t : (D ? order[D - 1].first : 0.0));
}

float l2_plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d) {
  // min |d|_2 s.t. w.d = c, lo <= d <= hi. The KKT conditions give d_j = clip(mu s w_j) for one mu >= 0 (s = sign c):
  // with a_j = |w_j| and b_j the box's room in d's direction, coordinate j contributes a_j min(mu a_j, b_j) to
  // |w.d|, growing with mu; it stops growing at mu_j = b_j / a_j. Find the smallest mu with reach(mu) = |c| among the
  // sorted mu_j and solve the linear piece: reach(mu) = capped + mu * free, free = sum of a_j^2 still moving.
  const double target = std::fabs(c);
  std::vector<double> a(D), b(D);
  // (mu_j, j) in (mu_j, j) order; the many mu_j = 0 (no room in the box) come first as they are, only the rest is
  // sorted (as in linf_plane_box_projection).
  std::vector<std::pair<double, int>> order, rest;
  order.reserve(D);
  double free_sq = 0;
  for (int j = 0; j < D; ++j) {
    const bool up = (c >= 0) == (w[j] >= 0);
    a[j] = std::fabs(static_cast<double>(w[j]));
    b[j] = std::max(0.0, static_cast<double>(up ? hi[j] : -lo[j]));
    if (a[j] > 0) {
      const double mu_j = b[j] / a[j];
      (mu_j == 0.0 ? order : rest).emplace_back(mu_j, j);
      free_sq += a[j] * a[j];
    }
  }
  std::sort(rest.begin(), rest.end());
  order.insert(order.end(), rest.begin(), rest.end());
  double capped = 0, mu = -1;
  for (const auto& [mu_j, j] : order) {
    if (capped + mu_j * free_sq >= target) {
      mu = (target - capped) / free_sq;
      break;
    }
    capped += a[j] * b[j];
    free_sq -= a[j] * a[j];
  }
  const bool reachable = mu >= 0;
  double norm_sq = 0;
  for (int j = 0; j < D; ++j) {
    if (a[j] == 0 || target == 0) {
      d[j] = 0.0f;
      continue;
    }
    const double dir = (c >= 0) == (w[j] >= 0) ? 1.0 : -1.0;
    // Unreachable within the box: every coordinate goes to its limit, the closest the box allows.
    const double len = reachable ? std::min(mu * a[j], b[j]) : b[j];
    d[j] = static_cast<float>(dir * len);
    norm_sq += len * len;
  }
  return static_cast<float>(std::sqrt(norm_sq));
}

long run_fab_targeted(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const FabConfig& cfg,
                      uint64_t seed, AttackRecord& rec, const AttackProgress& progress) {
  (void)seed;  // restart 0 starts from the clean point; further restarts are not drawn yet
  // The plane-and-box projection and every distance in the norm of the ball.
  const bool l2 = set.norm == Norm::L2;
  const auto project = l2 ? l2_plane_box_projection : linf_plane_box_projection;
  if (cfg.targets < 1 || cfg.targets > set.K - 1)
    throw InputError("FAB-T: " + std::to_string(cfg.targets) + " target classes asked; the model has " +
                     std::to_string(set.K - 1) + " classes besides the label");
  const int D = set.D, K = set.K;
  long spent = 0;
  for (int t = 0; t < cfg.targets; ++t) {
    std::vector<int> live;
    for (int e : todo)
      if (!rec.broken[e]) live.push_back(e);
    const size_t chunks = std::max<size_t>(1, (live.size() + cfg.chunk - 1) / cfg.chunk);
    for (size_t b0 = 0; b0 < live.size(); b0 += static_cast<size_t>(cfg.chunk)) {
      std::vector<int> part(live.begin() + b0, live.begin() + std::min(live.size(), b0 + cfg.chunk));
      const int m = static_cast<int>(part.size());
      std::vector<int> target(m);
      for (int l = 0; l < m; ++l) target[l] = ranked_target(set, part[l], t);
      std::vector<float> x(static_cast<size_t>(m) * D), g(m);
      for (int l = 0; l < m; ++l)
        std::copy_n(set.x0.data() + static_cast<size_t>(part[l]) * D, D, x.data() + static_cast<size_t>(l) * D);
      std::vector<int> pred(m), act(m);
      std::iota(act.begin(), act.end(), 0);
      std::vector<float> xb, gb;
      for (int it = 0; it <= cfg.iterations && !act.empty(); ++it) {
        const int n = static_cast<int>(act.size());
        xb.resize(static_cast<size_t>(n) * D);
        gb.resize(xb.size());
        for (int i = 0; i < n; ++i) std::copy_n(x.data() + static_cast<size_t>(act[i]) * D, D, xb.data() + static_cast<size_t>(i) * D);
        const bool need_grad = it < cfg.iterations;
        backend.logit_backprop(xb.data(), n, [&](int first, int cnt, const float* z, float* dz) {
          for (int i = 0; i < cnt; ++i) {
            const int l = act[first + i], y = set.label[part[l]];
            const float* zi = z + static_cast<size_t>(i) * K;
            g[l] = zi[y] - zi[target[l]];
            int top = 0;
            for (int j = 1; j < K; ++j)
              if (zi[j] > zi[top]) top = j;
            pred[l] = top;
            float* di_ = dz + static_cast<size_t>(i) * K;
            di_[y] = 1.0f;
            di_[target[l]] = -1.0f;
          }
        }, need_grad ? gb.data() : nullptr);
        spent += n;
        // Each entry's update is its own (the projections are a third of FAB's time): in parallel over the entries,
        // every entry's arithmetic the same on any thread; `keep` restores the order of the active list.
        std::vector<char> keep(n, 0);
#pragma omp parallel
        {
          std::vector<float> lo(D), hi(D), di(D), d0(D);
#pragma omp for schedule(dynamic, 4)
          for (int i = 0; i < n; ++i) {
            const int l = act[i], e = part[l];
            float* xl = x.data() + static_cast<size_t>(l) * D;
            const float* x0 = set.x0.data() + static_cast<size_t>(e) * D;
            if (pred[l] != set.label[e]) {
              double norm = 0;
              for (int p = 0; p < D; ++p) {
                const double dv = static_cast<double>(xl[p]) - x0[p];
                norm = l2 ? norm + dv * dv : std::max(norm, std::fabs(dv));
              }
              if (l2) norm = std::sqrt(norm);
              if (norm <= set.eps[e]) {
                rec.broken[e] = 1;
                rec.attack[e] = static_cast<int32_t>(AttackId::FabT);
                rec.restart[e] = t + 1;
                rec.step[e] = it;
                std::copy_n(xl, D, rec.adv.data() + static_cast<size_t>(e) * D);
                continue;
              }
              // Adversarial but too far: step back toward the clean point and keep shrinking.
              for (int p = 0; p < D; ++p) xl[p] = (1.0f - cfg.beta) * x0[p] + cfg.beta * xl[p];
              keep[i] = 1;
              continue;
            }
            if (!need_grad) continue;
            const float* w = gb.data() + static_cast<size_t>(i) * D;
            // Hyperplane g + w.(x' - x) = 0. From x: w.d = -g; from x0: w.d = -g - w.(x0 - x).
            for (int p = 0; p < D; ++p) {
              lo[p] = -xl[p];
              hi[p] = 1.0f - xl[p];
            }
            const float ni = project(w, -static_cast<double>(g[l]), lo.data(), hi.data(), D, di.data());
            double c0 = -static_cast<double>(g[l]);
            for (int p = 0; p < D; ++p) {
              c0 -= static_cast<double>(w[p]) * (x0[p] - xl[p]);
              lo[p] = -x0[p];
              hi[p] = 1.0f - x0[p];
            }
            const float n0 = project(w, c0, lo.data(), hi.data(), D, d0.data());
            const float a = std::min(ni / std::max(ni + n0, 1e-12f), cfg.alpha_max);
            for (int p = 0; p < D; ++p) {
              const float v = (1.0f - a) * (xl[p] + cfg.eta * di[p]) + a * (x0[p] + cfg.eta * d0[p]);
              xl[p] = std::min(std::max(v, 0.0f), 1.0f);
            }
            keep[i] = 1;
          }
        }
        std::vector<int> still;
        for (int i = 0; i < n; ++i)
          if (keep[i]) still.push_back(act[i]);
        act.swap(still);
        if (progress)
          progress((t + (static_cast<double>(b0 / cfg.chunk) + static_cast<double>(it) / cfg.iterations) / chunks) / cfg.targets);
      }
    }
  }
  return spent;
}

}  // namespace nudge
