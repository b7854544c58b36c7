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

#include "attacks.h"
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

namespace {

// Draw indices of one iteration's proposal (its step is the iteration).
enum : uint32_t { kRow1 = 0, kCol1 = 1, kRow2 = 2, kCol2 = 3, kSign = 4, kTranspose = 5 };

// What the proposal's calls share (square_search makes them one at a time): the start's bump patterns, the
// iteration's window side and its pattern in both orientations, and scratch for the perturbation, so that no query
// builds a pattern or allocates.
struct ProposalState {
  int bump = 0;                   // side of the start's bumps
  std::vector<double> bump_pattern[2];
  int s = 0;                      // the iteration's window side
  std::vector<double> pattern[2];
  std::vector<double> nu, fresh;  // the entry's perturbation [H*W], the new W1 [s*s]
  ProposalState(int H, int W) : bump(std::min(H, W) / 5), nu(static_cast<size_t>(H) * W) {
    bump_pattern[0] = square_l2_pattern(bump, false);
    bump_pattern[1] = square_l2_pattern(bump, true);
  }
  void set_side(int side) {
    if (side == s) return;
    s = side;
    pattern[0] = square_l2_pattern(s, false);
    pattern[1] = square_l2_pattern(s, true);
    fresh.resize(static_cast<size_t>(s) * s);
  }
};

// x = clip(x0 + nu * eps / |nu|, 0, 1); x0 itself when nu is all zero.
void place(const float* x0, const std::vector<double>& nu, float eps, float* x) {
  double n2 = 0;
  for (double v : nu) n2 += v * v;
  const double f = n2 > 0 ? eps / std::sqrt(n2) : 0.0;
  for (size_t q = 0; q < nu.size(); ++q)
    x[q] = std::min(std::max(static_cast<float>(x0[q] + nu[q] * f), 0.0f), 1.0f);
}

}  // namespace

SquareProposal square_l2_proposal(const AttackSet& set, const SquareConfig& cfg, int H, int W, uint64_t seed,
                                  int restart) {
  auto draw = [&set, seed, restart](int e, uint32_t step, uint32_t j) {
    return attack_uniform(seed, AttackId::Square, restart, set.point[e], set.eps[e], step, j);
  };
  auto state = std::make_shared<ProposalState>(H, W);
  SquareProposal p;
  p.start = [&set, state, H, W, draw](int e, float* x) {
    const int b = state->bump, nh = H / b, nw = W / b, oh = (H - nh * b) / 2, ow = (W - nw * b) / 2;
    std::vector<double>& nu = state->nu;
    std::fill(nu.begin(), nu.end(), 0.0);
    for (int bi = 0; bi < nh; ++bi)
      for (int bj = 0; bj < nw; ++bj) {
        const uint32_t k = static_cast<uint32_t>(bi * nw + bj);
        const double sign = draw(e, 0, 2 * k) < 0.5f ? -1.0 : 1.0;
        const std::vector<double>& pat = state->bump_pattern[draw(e, 0, 2 * k + 1) < 0.5f ? 0 : 1];
        for (int i = 0; i < b; ++i)
          for (int j = 0; j < b; ++j)
            nu[static_cast<size_t>(oh + bi * b + i) * W + ow + bj * b + j] = sign * pat[static_cast<size_t>(i) * b + j];
      }
    place(set.x0.data() + static_cast<size_t>(e) * set.D, nu, set.eps[e], x);
  };
  p.begin_iteration = [state, &cfg, H, W](int it) {
    state->set_side(square_l2_side(square_p(cfg.p_init, it - 1, cfg.schedule_iterations()), H, W));
  };
  p.propose = [&set, state, H, W, draw](int e, int it, const float* best, float* cand) {
    const int s = state->s;
    const float eps = set.eps[e];
    const float* x0 = set.x0.data() + static_cast<size_t>(e) * set.D;
    const uint32_t step = static_cast<uint32_t>(it);
    const int r1 = square_corner(draw(e, step, kRow1), H, s), c1 = square_corner(draw(e, step, kCol1), W, s);
    const int r2 = square_corner(draw(e, step, kRow2), H, s), c2 = square_corner(draw(e, step, kCol2), W, s);
    const double sign = draw(e, step, kSign) < 0.5f ? -1.0 : 1.0;
    const std::vector<double>& pat = state->pattern[draw(e, step, kTranspose) < 0.5f ? 0 : 1];
    auto in1 = [&](int h, int w) { return h >= r1 && h < r1 + s && w >= c1 && w < c1 + s; };
    auto in2 = [&](int h, int w) { return h >= r2 && h < r2 + s && w >= c2 && w < c2 + s; };

    std::vector<double>& nu = state->nu;  // every element is written below
    double all2 = 0, w1_2 = 0, union2 = 0;
    for (int h = 0; h < H; ++h)
      for (int w = 0; w < W; ++w) {
        const size_t q = static_cast<size_t>(h) * W + w;
        const double v = static_cast<double>(best[q]) - x0[q];
        nu[q] = v;
        all2 += v * v;
        if (in1(h, w)) w1_2 += v * v;
        if (in1(h, w) || in2(h, w)) union2 += v * v;
      }
    const double unused = std::max(static_cast<double>(eps) * eps - all2, 0.0);
    const double available = std::sqrt(union2 + unused);
    // The new window: the pattern plus the window's old content as a unit vector (1e-10 keeps an empty window's
    // quotient at zero), normalised and given all the norm W1 and W2 held plus the unused budget.
    const double w1_inv = 1.0 / (std::sqrt(w1_2) + 1e-10);
    std::vector<double>& fresh = state->fresh;
    double fresh2 = 0;
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) {
        const double v = sign * pat[static_cast<size_t>(i) * s + j] + nu[static_cast<size_t>(r1 + i) * W + c1 + j] * w1_inv;
        fresh[static_cast<size_t>(i) * s + j] = v;
        fresh2 += v * v;
      }
    const double scale = fresh2 > 0 ? available / std::sqrt(fresh2) : 0.0;
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) nu[static_cast<size_t>(r2 + i) * W + c2 + j] = 0.0;
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j) nu[static_cast<size_t>(r1 + i) * W + c1 + j] = fresh[static_cast<size_t>(i) * s + j] * scale;
    place(x0, nu, eps, cand);
  };
  return p;
}

}  // namespace nudge
