// Square (Andriushchenko et al., ECCV 2020, "Square Attack: a query-efficient black-box adversarial attack via
// random search"), L-inf, untargeted, from the paper: start from vertical stripes of +-eps, then at each iteration
// set one random square of side s (shrinking with the p schedule) to a random +-eps and keep the change when the
// margin z_y - max_{i != y} z_i falls. Forward passes only. Every entry draws its own square and sign from the
// counter generator (the reference implementation draws one per iteration for the whole batch, so its results
// depend on the batch).
#include <algorithm>
#include <cmath>

#include "optimize_math.h"
#include "attacks.h"
#include "errors.h"

namespace nudge {

double square_p(double p_init, int it, int queries) {
  const int i = static_cast<int>(static_cast<double>(it) / queries * 10000);
  static const int kAt[] = {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000};
  double p = p_init;
  for (int at : kAt)
    if (i > at) p /= 2;
  return p;
}

int square_side(double p, int H, int W) {
  const int s = static_cast<int>(std::lround(std::sqrt(p * H * W)));
  return std::max(1, std::min(s, H - 1));
}

namespace {

// Margins of the entries' candidate images (forward only).
void margins(Backend& backend, const AttackSet& set, const std::vector<int>& entries, const std::vector<float>& x,
             std::vector<float>& out) {
  out.resize(entries.size());
  backend.logit_backprop(x.data(), static_cast<int>(entries.size()), [&](int first, int m, const float* z, float*) {
    for (int i = 0; i < m; ++i)
      out[first + i] = attack_margin(z + static_cast<size_t>(i) * set.K, set.K, set.label[entries[first + i]]);
  }, nullptr);
}

long square_chunk(Backend& backend, const AttackSet& set, const std::vector<int>& e, const SquareConfig& cfg, int H,
                  int W, uint64_t seed, int restart, AttackRecord& rec, const std::function<void(double)>& tick) {
  const int D = set.D, m = static_cast<int>(e.size());
  std::vector<float> best(static_cast<size_t>(m) * D), cand, margin_best, margin_new;
  for (int l = 0; l < m; ++l) {
    const float* x0 = set.x0.data() + static_cast<size_t>(e[l]) * D;
    float* b = best.data() + static_cast<size_t>(l) * D;
    const float eps = set.eps[e[l]];
    for (int w = 0; w < W; ++w) {
      const float s = attack_uniform(seed, AttackId::Square, restart, set.point[e[l]], eps, 0, static_cast<uint32_t>(w)) < 0.5f ? -eps : eps;
      for (int h = 0; h < H; ++h) b[h * W + w] = std::min(std::max(x0[h * W + w] + s, 0.0f), 1.0f);
    }
  }
  margins(backend, set, e, best, margin_best);
  long spent = m;
  std::vector<int> live;  // local indices still robust
  auto retire = [&](int l, int step) {
    rec.broken[e[l]] = 1;
    rec.attack[e[l]] = static_cast<int32_t>(AttackId::Square);
    rec.restart[e[l]] = restart;
    rec.step[e[l]] = step;
    std::copy_n(best.data() + static_cast<size_t>(l) * D, D, rec.adv.data() + static_cast<size_t>(e[l]) * D);
  };
  for (int l = 0; l < m; ++l) {
    if (margin_best[l] < 0) retire(l, 0);
    else live.push_back(l);
  }
  std::vector<int> live_entries;
  for (int it = 1; it < cfg.queries && !live.empty(); ++it) {
    const int s = square_side(square_p(cfg.p_init, it, cfg.queries), H, W);
    const int n = static_cast<int>(live.size());
    cand.resize(static_cast<size_t>(n) * D);
    live_entries.resize(n);
    for (int i = 0; i < n; ++i) {
      const int l = live[i], en = e[l];
      const float eps = set.eps[en];
      const float* x0 = set.x0.data() + static_cast<size_t>(en) * D;
      const float* b = best.data() + static_cast<size_t>(l) * D;
      float* c = cand.data() + static_cast<size_t>(i) * D;
      std::copy_n(b, D, c);
      live_entries[i] = en;
      const uint32_t step = static_cast<uint32_t>(it);
      const int vh = std::min(H - s, static_cast<int>(attack_uniform(seed, AttackId::Square, restart, set.point[en], eps, step, 0) * (H - s + 1)));
      const int vw = std::min(W - s, static_cast<int>(attack_uniform(seed, AttackId::Square, restart, set.point[en], eps, step, 1) * (W - s + 1)));
      float sign = attack_uniform(seed, AttackId::Square, restart, set.point[en], eps, step, 2) < 0.5f ? -1.0f : 1.0f;
      // A square that changes nothing wastes a query: with one channel the only other choice is the other sign.
      for (int attempt = 0; attempt < 2; ++attempt) {
        bool changed = false;
        for (int h = vh; h < vh + s; ++h)
          for (int w = vw; w < vw + s; ++w) {
            const int p = h * W + w;
            c[p] = std::min(std::max(x0[p] + sign * eps, 0.0f), 1.0f);
            changed |= c[p] != b[p];
          }
        if (changed) break;
        sign = -sign;
      }
    }
    margins(backend, set, live_entries, cand, margin_new);
    spent += n;
    std::vector<int> still;
    for (int i = 0; i < n; ++i) {
      const int l = live[i];
      if (margin_new[i] < margin_best[l]) {
        margin_best[l] = margin_new[i];
        std::copy_n(cand.data() + static_cast<size_t>(i) * D, D, best.data() + static_cast<size_t>(l) * D);
      }
      if (margin_best[l] < 0) retire(l, it);
      else still.push_back(l);
    }
    live.swap(still);
    if (tick && it % 16 == 0) tick(static_cast<double>(it) / cfg.queries);
  }
  return spent;
}

}  // namespace

long run_square(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const SquareConfig& cfg, int H,
                int W, uint64_t seed, AttackRecord& rec, const AttackProgress& progress) {
  if (set.norm != Norm::Linf) throw InputError("square: only the L-inf version is implemented (use --norm linf)");
  if (cfg.queries < 1) throw InputError("square needs at least one query");
  if (H < 2 || W < 2 || H * W != set.D) throw InputError("square needs single-channel images of at least 2x2 pixels");
  long spent = 0;
  for (int r = 0; r < cfg.restarts; ++r) {
    std::vector<int> live;
    for (int e : todo)
      if (!rec.broken[e]) live.push_back(e);
    const size_t chunks = std::max<size_t>(1, (live.size() + cfg.chunk - 1) / cfg.chunk);
    for (size_t b = 0; b < live.size(); b += static_cast<size_t>(cfg.chunk)) {
      const std::vector<int> part(live.begin() + b, live.begin() + std::min(live.size(), b + cfg.chunk));
      const double c = static_cast<double>(b / cfg.chunk);
      spent += square_chunk(backend, set, part, cfg, H, W, seed, r, rec, [&](double f) {
        if (progress) progress((r + (c + f) / chunks) / cfg.restarts);
      });
    }
  }
  return spent;
}

}  // namespace nudge
