// Square in L2 (Andriushchenko et al., ECCV 2020, Section 3.2 and Algorithm 3), for single-channel images. The
// perturbation nu = x - x0 always has norm eps before the box clip. Its start is a grid of bumps of side
// min(H, W) / 5, each a two-halved pattern of random sign and orientation. Each iteration draws two windows W1 and
// W2 of side s (the p schedule): W2's mass and the budget still unused, eps^2 - |nu|^2, move into W1, where the new
// content is a random-sign pattern plus W1's old content, normalised, scaled to sqrt(|nu_{W1 u W2}|^2 + unused);
// then W2 is cleared, and the whole nu is rescaled to norm eps. Moving mass between windows rather than adding it lets
// the search change where the perturbation sits while its norm stays on the sphere. Every draw is the entry's own
// (counter generator), as in the L-inf version.
#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "attacks.h"
#include "errors.h"
#include "square_l2_rows.h"
#include "square_search.h"

namespace nudge {

int square_l2_side(double p, int H, int W) {
  int s = std::max(3, static_cast<int>(std::lround(std::sqrt(p * H * W))));
  if (s % 2 == 0) ++s;
  const int cap = std::min(H, W) - 1;
  if (s > cap) s = cap % 2 ? cap : cap - 1;
  return s;
}

std::vector<double> square_bump(int rows, int cols) {
  std::vector<double> b(static_cast<size_t>(rows) * cols);
  const int cr = rows / 2, cc = cols / 2, rings = std::max(rows / 2, cols / 2) + 1;
  // tail[d] = sum_{k=d}^{rings-1} 1/(k+1)^2: the pixel at distance d lies in rings d, d+1, ..., rings-1.
  std::vector<double> tail(rings + 1, 0.0);
  for (int k = rings - 1; k >= 0; --k) tail[k] = tail[k + 1] + 1.0 / ((k + 1.0) * (k + 1.0));
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) b[static_cast<size_t>(i) * cols + j] = tail[std::max(std::abs(i - cr), std::abs(j - cc))];
  return b;
}

namespace {

void scale_to_unit_norm(std::vector<double>& v) {
  double n2 = 0;
  for (double x : v) n2 += x * x;
  const double inv = 1.0 / std::sqrt(n2);
  for (double& x : v) x *= inv;
}

}  // namespace

std::vector<double> square_l2_pattern(int s, bool transpose) {
  const int top = s / 2;
  // Each half at unit norm first, so that the two carry equal mass although the lower one is a row taller (for odd
  // s); the pattern moves mass across its midline, not toward its taller side.
  std::vector<double> up = square_bump(top, s), down = square_bump(s - top, s);
  scale_to_unit_norm(up);
  scale_to_unit_norm(down);
  std::vector<double> p(static_cast<size_t>(s) * s);
  std::copy(up.begin(), up.end(), p.begin());
  std::transform(down.begin(), down.end(), p.begin() + up.size(), [](double v) { return -v; });
  scale_to_unit_norm(p);
  if (transpose) {
    std::vector<double> t(p.size());
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) t[static_cast<size_t>(j) * s + i] = p[static_cast<size_t>(i) * s + j];
    p.swap(t);
  }
  return p;
}

std::vector<double> square_l2_pattern_table(int max_side) {
  std::vector<double> table;
  for (int s = 1; s <= max_side; ++s) {
    if (static_cast<long>(table.size()) != square_pattern_offset(s))
      throw InternalError("square_l2_pattern_table: the layout disagrees with square_pattern_offset");
    for (bool transpose : {false, true}) {
      const std::vector<double> p = square_l2_pattern(s, transpose);
      table.insert(table.end(), p.begin(), p.end());
    }
  }
  return table;
}

SquareProposal square_l2_proposal(const AttackSet& set, const SquareConfig& cfg, int H, int W, uint64_t seed,
                                  int restart, std::shared_ptr<const std::vector<double>> patterns) {
  // The rows of host/core/square_l2_rows.h, which the CUDA kernels run too, on the host's lanes, with each thread's
  // own scratch, so that calls may run side by side (square_search.h).
  if (!patterns || static_cast<long>(patterns->size()) != square_pattern_offset(std::min(H, W)))
    throw InternalError("square_l2_proposal: a pattern table of another size");
  auto key = [&set, seed, restart](int e) {
    return ApgdKey{seed, static_cast<uint32_t>(AttackId::Square), restart, set.point[e]};
  };
  auto scratch = [H, W]() -> std::pair<double*, double*> {
    thread_local std::vector<double> nu, partial;
    nu.resize(static_cast<size_t>(H) * W);
    partial.resize(kApgdPartials);
    return {nu.data(), partial.data()};
  };
  SquareProposal p;
  p.start = [&set, H, W, key, patterns, scratch](int e, float* x) {
    const auto [nu, partial] = scratch();
    HostLanes lanes;
    square_l2_start_row(lanes, partial, nu, key(e), set.eps[e], set.x0.data() + static_cast<size_t>(e) * set.D, x, H,
                        W, patterns->data());
  };
  p.propose = [&set, &cfg, H, W, key, patterns, scratch](int e, int it, const float* best, float* cand) {
    const int s = square_window_side(Norm::L2, cfg, it, H, W);
    const auto [nu, partial] = scratch();
    HostLanes lanes;
    square_l2_propose_row(lanes, partial, nu, key(e), set.eps[e], it, s,
                          set.x0.data() + static_cast<size_t>(e) * set.D, best, cand, H, W, patterns->data());
  };
  return p;
}

}  // namespace nudge
