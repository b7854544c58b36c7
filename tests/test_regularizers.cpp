// The image priors of class visualisation (host/optimize/regularizers.h) and the regularised / ensemble optimize chunk
// (host/optimize/regularized_chunk.h), checked through their contracts:
//   - each penalty's gradient against central differences: anisotropic TV at points away from its kinks (every
//     neighbour difference far larger than h, where the piecewise-linear penalty is exactly linear), isotropic TV
//     (smooth there too), L2 and L1 decay; each penalty's value against its formula;
//   - the sigmoid parametrisation's chain rule through the chunk: one SGD step moves the free variables by
//     lr * dL/dw, compared with the model's input gradient times x (1 - x) and with differences of L(sigmoid(w));
//   - jitter: shift and unshift are adjoint (<shift x, y> = <x, unshift y>); the offsets are a pure function of
//     (seed, entry, step) within +-s that reach every value; and an engine run with jitter (and the other priors, and
//     an ensemble) gives bit-identical rows whether the job runs in chunks of 7 or whole;
//   - blur keeps a constant image and its kernel sums to 1;
//   - the ensemble objective: the chunk's loss is the sum of the single models' losses, its step the sum of their
//     gradients (two different random models);
//   - the prior weight schedule (confidence phase): 1 until settle_steps, then prior_decay per update.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cpu_backend.h"
#include "model.h"
#include "optimize_engine.h"
#include "optimize_job.h"
#include "regularized_chunk.h"
#include "regularizers.h"
#include "start_images.h"

namespace nudge {
namespace {

constexpr int kSide = 28;
constexpr int kD = kSide * kSide;
constexpr int kK = 10;

// An image whose every pair of horizontal or vertical neighbours differs by at least `gap`: a random permutation of
// the levels 0, 1, ..., HW-1, rescaled to [0, 1], has distinct values, and we redraw until neighbours are far apart.
std::vector<float> image_away_from_ties(int H, int W, float gap, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x(static_cast<size_t>(H) * W);
  for (int attempt = 0; attempt < 10000; ++attempt) {
    std::vector<int> perm(x.size());
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(perm[i]) / static_cast<float>(x.size() - 1);
    bool ok = true;
    for (int i = 0; i < H && ok; ++i)
      for (int j = 0; j < W && ok; ++j) {
        if (j + 1 < W && std::fabs(x[i * W + j] - x[i * W + j + 1]) < gap) ok = false;
        if (i + 1 < H && std::fabs(x[i * W + j] - x[(i + 1) * W + j]) < gap) ok = false;
      }
    if (ok) return x;
  }
  ADD_FAILURE() << "no image away from ties found";
  return x;
}

std::vector<float> uniform_image(size_t n, uint32_t seed, float lo = 0.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> x(n);
  for (float& v : x) v = u(rng);
  return x;
}

using Penalty = std::function<float(const float*, float*)>;

// Compares the penalty's gradient with central differences of its value, every pixel; returns the largest error.
double max_fd_error(const Penalty& f, std::vector<float> x, float h) {
  std::vector<float> grad(x.size(), 0.0f);
  f(x.data(), grad.data());
  double worst = 0;
  for (size_t p = 0; p < x.size(); ++p) {
    const float keep = x[p];
    x[p] = keep + h;
    const double up = f(x.data(), nullptr);
    x[p] = keep - h;
    const double down = f(x.data(), nullptr);
    x[p] = keep;
    // The step actually taken in float, not the nominal h.
    const double step = static_cast<double>(keep + h) - static_cast<double>(keep - h);
    worst = std::max(worst, std::fabs((up - down) / step - grad[p]));
  }
  return worst;
}

// ---- the penalties ------------------------------------------------------------------------------------------------

TEST(Regularizers, AnisotropicTvGradientMatchesDifferencesAwayFromTies) {
  for (const auto& [H, W] : {std::pair<int, int>{5, 7}, {6, 6}}) {
    // Neighbour gaps >= 1/(HW) ~ 0.03 against h = 1e-3: no difference changes sign, so TV is linear over [x-h, x+h]
    // and the quotient equals the subgradient up to float rounding of the sum (~H W 1e-7 / 2e-3).
    const std::vector<float> x = image_away_from_ties(H, W, 1.0f / (H * W), 11 + H);
    const float weight = 0.7f;
    const Penalty f = [&](const float* v, float* g) { return tv_anisotropic(v, H, W, weight, g); };
    EXPECT_LT(max_fd_error(f, x, 1e-3f), 2e-3) << H << "x" << W;
    // The value: sum of |differences|, times the weight.
    double sum = 0;
    for (int i = 0; i < H; ++i)
      for (int j = 0; j < W; ++j) {
        if (j + 1 < W) sum += std::fabs(x[i * W + j] - x[i * W + j + 1]);
        if (i + 1 < H) sum += std::fabs(x[i * W + j] - x[(i + 1) * W + j]);
      }
    EXPECT_NEAR(f(x.data(), nullptr), weight * sum, 1e-4 * weight * sum);
  }
}

TEST(Regularizers, AnisotropicTvOfAConstantImageIsZeroWithZeroGradient) {
  std::vector<float> x(20, 0.3f), g(20, 0.0f);
  EXPECT_EQ(tv_anisotropic(x.data(), 4, 5, 1.0f, g.data()), 0.0f);
  for (float v : g) EXPECT_EQ(v, 0.0f);  // sign(0) = 0
}

TEST(Regularizers, IsotropicTvGradientMatchesDifferences) {
  for (const auto& [H, W] : {std::pair<int, int>{5, 7}, {6, 6}}) {
    // Away from ties every sqrt(dx^2 + dy^2) is >= 0.03, where it is smooth: with h = 2e-3 the truncation error is
    // ~h^2 / r^2 ~ 5e-3 at worst and typically far less.
    const std::vector<float> x = image_away_from_ties(H, W, 1.0f / (H * W), 23 + W);
    const float weight = 0.4f;
    const Penalty f = [&](const float* v, float* g) { return tv_isotropic(v, H, W, weight, g); };
    EXPECT_LT(max_fd_error(f, x, 2e-3f), 5e-3) << H << "x" << W;
    double sum = 0;
    for (int i = 0; i < H; ++i)
      for (int j = 0; j < W; ++j) {
        const double dx = j + 1 < W ? x[i * W + j + 1] - x[i * W + j] : 0.0;
        const double dy = i + 1 < H ? x[(i + 1) * W + j] - x[i * W + j] : 0.0;
        sum += std::sqrt(dx * dx + dy * dy + 1e-8);
      }
    EXPECT_NEAR(f(x.data(), nullptr), weight * sum, 1e-4 * weight * sum);
  }
}

TEST(Regularizers, IsotropicTvGradientMatchesDifferencesOnRandomImages) {
  // Plain random images, as the optimizer meets them: ties are unlikely, and the penalty is smooth elsewhere.
  for (uint32_t seed : {1u, 2u, 3u}) {
    const std::vector<float> x = uniform_image(8 * 9, seed);
    const Penalty f = [&](const float* v, float* g) { return tv_isotropic(v, 8, 9, 1.0f, g); };
    EXPECT_LT(max_fd_error(f, x, 1e-3f), 2e-2) << "seed " << seed;
  }
}

TEST(Regularizers, L2DecayGradientAndValue) {
  for (float center : {0.0f, 0.5f}) {
    const std::vector<float> x = uniform_image(50, 5);
    const float weight = 0.3f;
    const Penalty f = [&](const float* v, float* g) { return l2_decay(v, 50, center, weight, g); };
    EXPECT_LT(max_fd_error(f, x, 1e-2f), 1e-3) << "center " << center;
    std::vector<float> g(50, 1.0f);  // the gradient is added, not written
    double sum = 0;
    for (int i = 0; i < 50; ++i) sum += 0.5 * (x[i] - center) * (x[i] - center);
    EXPECT_NEAR(l2_decay(x.data(), 50, center, weight, g.data()), weight * sum, 1e-5);
    for (int i = 0; i < 50; ++i) EXPECT_NEAR(g[i], 1.0f + weight * (x[i] - center), 1e-6);
  }
}

TEST(Regularizers, L1DecayGradientAndValue) {
  for (float center : {0.0f, 0.5f}) {
    // Pixels at least 0.05 from the center, where |x - c| is linear over [x - h, x + h].
    std::vector<float> x = uniform_image(50, 6);
    for (float& v : x)
      if (std::fabs(v - center) < 0.05f) v = center + 0.1f;
    const float weight = 0.3f;
    const Penalty f = [&](const float* v, float* g) { return l1_decay(v, 50, center, weight, g); };
    EXPECT_LT(max_fd_error(f, x, 1e-2f), 1e-3) << "center " << center;
    double sum = 0;
    for (float v : x) sum += std::fabs(v - center);
    EXPECT_NEAR(f(x.data(), nullptr), weight * sum, 1e-5);
  }
  // At the center the subgradient used is 0: a black pixel under decay toward black stays put.
  std::vector<float> zero(3, 0.0f), g(3, 0.0f);
  EXPECT_EQ(l1_decay(zero.data(), 3, 0.0f, 1.0f, g.data()), 0.0f);
  for (float v : g) EXPECT_EQ(v, 0.0f);
}

// ---- blur, shifts, jitter -------------------------------------------------------------------------------------------

TEST(Regularizers, BlurKeepsAConstantImageAndItsKernelSumsToOne) {
  for (float sigma : {0.3f, 0.5f, 1.0f, 2.0f, 3.0f}) {
    const int H = 13, W = 11;
    std::vector<float> c(H * W, 0.37f), out(H * W);
    gaussian_blur(c.data(), H, W, sigma, out.data());
    for (float v : out) EXPECT_NEAR(v, 0.37f, 1e-6) << "sigma " << sigma;
    // A unit impulse far enough from the edges spreads into the kernel itself: it sums to 1, is symmetric, and
    // peaks at the centre.
    const int N = 31, mid = 15;
    std::vector<float> delta(N * N, 0.0f), k(N * N);
    delta[mid * N + mid] = 1.0f;
    gaussian_blur(delta.data(), N, N, sigma, k.data());
    double sum = 0;
    for (float v : k) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-5) << "sigma " << sigma;
    EXPECT_EQ(*std::max_element(k.begin(), k.end()), k[mid * N + mid]);
    for (int d = 1; d <= 3; ++d) {
      EXPECT_FLOAT_EQ(k[mid * N + mid - d], k[mid * N + mid + d]);
      EXPECT_FLOAT_EQ(k[(mid - d) * N + mid], k[(mid + d) * N + mid]);
    }
  }
}

TEST(Regularizers, ShiftAndUnshiftAreAdjoint) {
  const int H = 9, W = 7;
  const std::vector<float> x = uniform_image(H * W, 1, -1.0f, 1.0f), y = uniform_image(H * W, 2, -1.0f, 1.0f);
  std::vector<float> sx(H * W), uy(H * W);
  for (int dy = -3; dy <= 3; ++dy)
    for (int dx = -3; dx <= 3; ++dx) {
      shift_image(x.data(), H, W, dy, dx, sx.data());
      unshift_gradient(y.data(), H, W, dy, dx, uy.data());
      double a = 0, b = 0;
      for (int p = 0; p < H * W; ++p) {
        a += static_cast<double>(sx[p]) * y[p];
        b += static_cast<double>(x[p]) * uy[p];
      }
      EXPECT_NEAR(a, b, 1e-9) << "shift " << dy << "," << dx;
    }
  // And the shift itself: out[i][j] = in[i - dy][j - dx], zero where that falls outside.
  shift_image(x.data(), H, W, 2, -1, sx.data());
  EXPECT_EQ(sx[3 * W + 4], x[1 * W + 5]);
  EXPECT_EQ(sx[0 * W + 3], 0.0f);
  EXPECT_EQ(sx[5 * W + (W - 1)], 0.0f);
}

TEST(Regularizers, JitterOffsetsArePureAndWithinRange) {
  for (int s : {1, 2, 3}) {
    std::set<int> seen_dy, seen_dx;
    int differ_by_entry = 0;
    for (uint64_t entry = 0; entry < 50; ++entry)
      for (int step = 0; step < 20; ++step) {
        int dy, dx, dy2, dx2;
        jitter_offsets(7, entry, step, s, &dy, &dx);
        jitter_offsets(7, entry, step, s, &dy2, &dx2);
        EXPECT_EQ(dy, dy2);
        EXPECT_EQ(dx, dx2);
        EXPECT_GE(dy, -s);
        EXPECT_LE(dy, s);
        EXPECT_GE(dx, -s);
        EXPECT_LE(dx, s);
        seen_dy.insert(dy);
        seen_dx.insert(dx);
        int oy, ox;
        jitter_offsets(7, entry + 1000, step, s, &oy, &ox);
        differ_by_entry += oy != dy || ox != dx;
      }
    EXPECT_EQ(static_cast<int>(seen_dy.size()), 2 * s + 1) << "every shift in [-s, s] occurs";
    EXPECT_EQ(static_cast<int>(seen_dx.size()), 2 * s + 1);
    EXPECT_GT(differ_by_entry, 500) << "entries get their own shifts";
  }
  // Another seed gives other shifts.
  int differ_by_seed = 0;
  for (int step = 0; step < 100; ++step) {
    int a, b, c, d;
    jitter_offsets(1, 3, step, 2, &a, &b);
    jitter_offsets(2, 3, step, 2, &c, &d);
    differ_by_seed += a != c || b != d;
  }
  EXPECT_GT(differ_by_seed, 50);
}

TEST(Regularizers, PriorScaleIsOneUntilSettleThenDecays) {
  RegularizerConfig r;
  r.settle_steps = 10;
  EXPECT_EQ(prior_scale(r, 0), 1.0f);
  EXPECT_EQ(prior_scale(r, 50), 1.0f);  // prior_decay 1: constant weights
  r.prior_decay = 0.9f;
  EXPECT_EQ(prior_scale(r, 0), 1.0f);
  EXPECT_EQ(prior_scale(r, 10), 1.0f);
  EXPECT_NEAR(prior_scale(r, 11), 0.9f, 1e-7);
  EXPECT_NEAR(prior_scale(r, 30), std::pow(0.9, 20), 1e-7);
}

// ---- the regularised chunk ------------------------------------------------------------------------------------------

const Model& small_model(uint64_t seed) {
  static const Model a = Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 7);
  static const Model b = Model::glorot(Architecture::parse("1x28x28:flatten,dense16,relu,dense10"), 8);
  return seed == 7 ? a : b;
}

std::unique_ptr<Backend> backend_for(const Model& m) {
  auto b = make_cpu_backend();
  b->load_model(m);
  return b;
}

// n noise images aimed at classes i mod 10.
struct ChunkData {
  int n;
  std::vector<float> start, dist;
  std::vector<int32_t> kind, cls;
  explicit ChunkData(int count) : n(count), start(static_cast<size_t>(count) * kD), dist(static_cast<size_t>(count) * kK, 0.0f),
                                  kind(count, static_cast<int32_t>(TargetKind::OneHot)), cls(count) {
    for (int i = 0; i < n; ++i) {
      noise_image(5, i, kD, start.data() + static_cast<size_t>(i) * kD);
      cls[i] = i % kK;
      dist[static_cast<size_t>(i) * kK + cls[i]] = 1.0f;
    }
  }
  ChunkInput input() const {
    ChunkInput in;
    in.n = n;
    in.start = start.data();
    in.target_dist = dist.data();
    in.target_kind = kind.data();
    in.target_class = cls.data();
    return in;
  }
};

struct Eval {
  std::vector<float> probs, loss, grad;
};

Eval evaluate(Backend& b, const std::vector<float>& x, const ChunkData& d) {
  Eval e{std::vector<float>(static_cast<size_t>(d.n) * kK), std::vector<float>(d.n), std::vector<float>(x.size())};
  b.input_gradient(x.data(), d.n, d.dist.data(), d.kind.data(), d.cls.data(), LossKind::CrossEntropy, 0.0f,
                   e.probs.data(), e.loss.data(), e.grad.data());
  return e;
}

float sigmoidf(float w) { return 1.0f / (1.0f + std::exp(-w)); }
float logitf(float x) {
  const float c = std::min(std::max(x, 1e-3f), 1.0f - 1e-3f);
  return std::log(c / (1.0f - c));
}

TEST(RegularizedChunk, EnsembleLossIsTheSumOfTheModelsLossesAndItsStepTheSumOfTheirGradients) {
  const Model &ma = small_model(7), &mb = small_model(8);
  auto a = backend_for(ma), b = backend_for(mb);
  const ChunkData d(6);
  const Eval ea = evaluate(*a, d.start, d), eb = evaluate(*b, d.start, d);
  // The models differ, so the sum is not twice either.
  for (int i = 0; i < d.n; ++i) EXPECT_GT(std::fabs(ea.loss[i] - eb.loss[i]), 1e-4) << i;

  StepConfig cfg;
  cfg.optimizer = InputOptimizer::Sgd;
  cfg.lr = 1e-3f;  // small: the pixels stay inside (0, 1), so clamping does not hide the step
  RegularizerConfig reg;  // no priors: the ensemble alone
  {
    // Evaluated without a step, the start's loss is the sum; the probabilities are the first model's.
    auto chunk = make_regularized_chunk({a.get(), b.get()}, kSide, kSide, kK, d.input(), cfg, reg, 1, 0);
    const ChunkResult r = chunk->finish();
    for (int i = 0; i < d.n; ++i) {
      EXPECT_NEAR(r.best_loss[i], ea.loss[i] + eb.loss[i], 1e-5 * (1 + ea.loss[i] + eb.loss[i])) << i;
      for (int k = 0; k < kK; ++k) EXPECT_EQ(r.best_probs[i * kK + k], ea.probs[i * kK + k]);
    }
  }
  // One SGD step moves each pixel by -lr (g_a + g_b). A goal every iterate meets, from update 1 on, makes the
  // chunk report exactly the iterate after that step.
  cfg.stop_prob = 1e-30f;
  reg.settle_steps = 1;
  auto chunk = make_regularized_chunk({a.get(), b.get()}, kSide, kSide, kK, d.input(), cfg, reg, 1, 0);
  chunk->step();
  const ChunkResult r = chunk->finish();
  int checked = 0;
  for (int i = 0; i < d.n; ++i) {
    ASSERT_EQ(r.success_step[i], 1) << i;
    for (int p = 0; p < kD; ++p) {
      const size_t o = static_cast<size_t>(i) * kD + p;
      const float x0 = d.start[o];
      const float expected = x0 - cfg.lr * (ea.grad[o] + eb.grad[o]);
      if (expected <= 0.0f || expected >= 1.0f) continue;
      EXPECT_NEAR(r.best_images[o], expected, 1e-6f + 1e-4f * std::fabs(expected - x0)) << i << "," << p;
      ++checked;
    }
  }
  EXPECT_GT(checked, d.n * kD / 2);
}

TEST(RegularizedChunk, SigmoidParametrisationAppliesTheChainRule) {
  const Model& m = small_model(7);
  auto b = backend_for(m);
  const ChunkData d(4);
  StepConfig cfg;
  cfg.optimizer = InputOptimizer::Sgd;
  cfg.lr = 50.0f;  // dL/dw is small (x (1 - x) <= 1/4): a long step, read back exactly from the image
  cfg.stop_prob = 1e-30f;  // with settle_steps = 1, the reported iterate is the one after the first update
  RegularizerConfig reg;
  reg.sigmoid = true;
  reg.settle_steps = 1;
  // The free variables start at logit(start), clamped to [1e-3, 1 - 1e-3]; the image the model sees is their sigmoid.
  std::vector<float> w0(d.start.size()), x0(d.start.size());
  for (size_t o = 0; o < w0.size(); ++o) {
    w0[o] = logitf(d.start[o]);
    x0[o] = sigmoidf(w0[o]);
  }
  const Eval e0 = evaluate(*b, x0, d);
  auto chunk = make_regularized_chunk({b.get()}, kSide, kSide, kK, d.input(), cfg, reg, 1, 0);
  chunk->step();
  const ChunkResult r = chunk->finish();
  std::mt19937 rng(3);
  for (int i = 0; i < d.n; ++i) {
    ASSERT_EQ(r.success_step[i], 1) << "the stepped iterate is reported";
    // dL/dw = dL/dx * x (1 - x): the step the chunk took, read back from the image.
    double worst = 0, scale = 0;
    for (int p = 0; p < kD; ++p) {
      const size_t o = static_cast<size_t>(i) * kD + p;
      const double applied = (static_cast<double>(w0[o]) - logitf(r.best_images[o])) / cfg.lr;
      const double expected = static_cast<double>(e0.grad[o]) * x0[o] * (1.0 - x0[o]);
      worst = std::max(worst, std::fabs(applied - expected));
      scale = std::max(scale, std::fabs(expected));
    }
    ASSERT_GT(scale, 1e-4) << "a step to measure";
    // Reading w back through logit(sigmoid(w)) in float costs up to ~1e-7 / (1 - x) ~ 1e-4 near x = 1, / lr.
    EXPECT_LT(worst, 1e-3 * scale + 1e-5) << "image " << i;
    // The same derivative from differences of L(sigmoid(w)) in w, on a few pixels (the model is piecewise linear,
    // the float loss noisy: a loose bound, which a missing x (1 - x) factor, up to 4x, would still break).
    std::vector<float> w(w0.begin() + static_cast<size_t>(i) * kD, w0.begin() + static_cast<size_t>(i + 1) * kD);
    ChunkData one(1);
    one.cls[0] = d.cls[i];
    std::fill(one.dist.begin(), one.dist.end(), 0.0f);
    one.dist[one.cls[0]] = 1.0f;
    auto loss_at = [&](const std::vector<float>& ww) {
      std::vector<float> x(kD);
      for (int p = 0; p < kD; ++p) x[p] = sigmoidf(ww[p]);
      return static_cast<double>(evaluate(*b, x, one).loss[0]);
    };
    // The pixels with the largest derivatives, where the difference quotient stands well above the float noise.
    std::vector<int> order(kD);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(), [&](int p, int q) {
      const size_t o = static_cast<size_t>(i) * kD;
      return std::fabs(e0.grad[o + p] * x0[o + p] * (1 - x0[o + p])) > std::fabs(e0.grad[o + q] * x0[o + q] * (1 - x0[o + q]));
    });
    for (int k = 0; k < 5; ++k) {
      const int p = order[k];
      const size_t o = static_cast<size_t>(i) * kD + p;
      const float h = 1e-2f;
      std::vector<float> up = w, down = w;
      up[p] += h;
      down[p] -= h;
      const double fd = (loss_at(up) - loss_at(down)) / (static_cast<double>(up[p]) - down[p]);
      const double expected = static_cast<double>(e0.grad[o]) * x0[o] * (1.0 - x0[o]);
      EXPECT_NEAR(fd, expected, 0.1 * std::fabs(expected) + 1e-4) << "image " << i << " pixel " << p;
    }
  }
}

// ---- the engine: chunking is invisible with every prior on -------------------------------------------------------

struct Row {
  RowResult r;
  std::vector<float> image;
};

class CollectSink : public RowSink {
 public:
  void row(const RowResult& r) override {
    Row c{r, std::vector<float>(r.image, r.image + kD)};
    c.r.start = nullptr;
    c.r.image = nullptr;
    rows.push_back(std::move(c));
  }
  std::vector<Row> rows;
};

std::vector<Row> run_engine(const OptimizeJob& job, bool ensemble) {
  auto a = backend_for(small_model(7));
  auto b = backend_for(small_model(8));
  const StartImages starts(job, nullptr, kSide, kSide);
  CollectSink sink;
  std::vector<Backend*> extra;
  if (ensemble) extra.push_back(b.get());
  const EngineStats stats = run_optimize(*a, small_model(7), job, starts, sink, false, extra);
  EXPECT_NE(stats.path.find("regularized"), std::string::npos) << stats.path;
  return std::move(sink.rows);
}

void expect_identical(const std::vector<Row>& x, const std::vector<Row>& y, const std::string& what) {
  ASSERT_EQ(x.size(), y.size()) << what;
  int differ = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const RowResult &a = x[i].r, &b = y[i].r;
    const bool same = a.row == b.row && a.target.cls == b.target.cls && a.success == b.success &&
                      a.success_step == b.success_step && a.updates == b.updates &&
                      std::memcmp(&a.loss, &b.loss, sizeof(float)) == 0 && a.probs.size() == b.probs.size() &&
                      std::memcmp(a.probs.data(), b.probs.data(), a.probs.size() * sizeof(float)) == 0 &&
                      std::memcmp(x[i].image.data(), y[i].image.data(), kD * sizeof(float)) == 0;
    if (!same && ++differ <= 3)
      ADD_FAILURE() << what << ": row " << i << " differs (success " << a.success << "/" << b.success << ", updates "
                    << a.updates << "/" << b.updates << ", loss " << a.loss << "/" << b.loss << ")";
  }
  EXPECT_EQ(differ, 0) << what;
}

TEST(RegularizedEngine, JitterAndPriorsAreIndependentOfChunking) {
  struct Case {
    const char* name;
    bool sigmoid, ensemble;
    float stop_at;  // the random models' confidence moves little: a bar that some entries reach, others not
  };
  for (const Case& c : {Case{"clamped, one model", false, false, 0.15f}, Case{"sigmoid, ensemble", true, true, 0.12f}}) {
    OptimizeJob job;
    job.init = InitKind::Noise;
    job.count = 30;
    job.target = "all";
    job.steps = 12;
    job.seed = 42;
    job.step.stop_prob = c.stop_at;  // some entries stop early, others run on: the active sets differ between chunkings
    job.step.early_stop = true;
    job.reg.tv = 0.02f;
    job.reg.l2 = 0.02f;
    job.reg.l1 = 0.01f;
    job.reg.l2_center = 0.0f;
    job.reg.blur_every = 3;
    job.reg.blur_sigma = 1.0f;
    job.reg.blur_decay = 0.9f;
    job.reg.jitter = 2;
    job.reg.settle_steps = 4;
    job.reg.prior_decay = 0.9f;
    job.reg.sigmoid = c.sigmoid;
    const std::vector<Row> whole = run_engine(job, c.ensemble);
    // Some entries stop early while others run on, so the chunks' active sets really differ.
    int stopped = 0;
    for (const Row& r : whole) stopped += r.r.updates < job.steps;
    EXPECT_GT(stopped, 0) << c.name;
    EXPECT_LT(stopped, static_cast<int>(whole.size())) << c.name;
    job.chunk = 7;
    expect_identical(whole, run_engine(job, c.ensemble), std::string(c.name) + ", chunk 7");
  }
}

TEST(RegularizedEngine, JitterChangesWhatTheModelSees) {
  // The same job with and without jitter, no other prior: the results differ, yet stay in [0, 1].
  OptimizeJob job;
  job.init = InitKind::Noise;
  job.count = 10;
  job.target = "all";
  job.steps = 5;
  job.reg.settle_steps = 1;  // a regularised run with no prior that changes the objective
  const std::vector<Row> plain = run_engine(job, false);
  job.reg.jitter = 2;
  const std::vector<Row> jittered = run_engine(job, false);
  int differ = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    differ += plain[i].image != jittered[i].image;
    for (float v : jittered[i].image) {
      EXPECT_GE(v, 0.0f);
      EXPECT_LE(v, 1.0f);
    }
  }
  EXPECT_GT(differ, 0);
}

}  // namespace
}  // namespace nudge
