// Gradients against central differences, the losses' edge cases, goal tests, and the input update / projection.
//
// Whole-network gradients: the float path under test is CpuNetwork::forward -> loss_forward_backward_one (dlogits)
// -> CpuNetwork::backward (parameter gradients, dx) and CpuBackend::input_gradient. The finite differences are taken
// of the double-precision twin (tests/support/reference_math: the same network in double, the losses straight from
// their formulas), at the float parameters and inputs, which are exact in double. In double the difference quotient
// with h = 1e-6 has rounding error ~1e-16 / 1e-6 = 1e-10 and, the network being piecewise linear and the loss
// smooth, truncation error ~h^2: it is the exact gradient for our purposes, so the bound measures only the float
// path's rounding. A small h also rarely crosses a kink; every difference whose +h or -h point changes any ReLU sign,
// pool argmax or Carlini-Wagner branch is skipped (and counted), and the inputs are redrawn until no ReLU input or
// pool window is within 1e-6 of its kink, ten times the float forward's own error, so float and double agree on
// the pieces. A second check takes differences of the float network itself, with h = 1e-2 (see there).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "cpu_backend.h"
#include "cpu_network.h"
#include "optimize_math.h"
#include "model.h"
#include "reference_math.h"

namespace nudge {
namespace {

// ---- whole-network gradients ----------------------------------------------------------------------------------

struct LossCase {
  const char* name;
  LossKind loss;
  TargetKind kind;
  float kappa;  // large enough that Carlini-Wagner is active (logits of these models are O(1))
};

const LossCase kLossCases[] = {
    {"ce one-hot", LossKind::CrossEntropy, TargetKind::OneHot, 0},
    {"ce soft", LossKind::CrossEntropy, TargetKind::Soft, 0},
    {"kl soft", LossKind::KL, TargetKind::Soft, 0},
    {"cw one-hot", LossKind::CarliniWagner, TargetKind::OneHot, 5},
    {"cw untargeted", LossKind::CarliniWagner, TargetKind::Untargeted, 5},
    {"ce untargeted", LossKind::CrossEntropy, TargetKind::Untargeted, 0},
};

struct Targets {
  std::vector<float> dist;  // [N, K]
  std::vector<int32_t> kind, cls;
};

// One-hot targets at a random class; soft targets random with a zero entry; untargeted: a random "true label".
Targets make_targets(const LossCase& lc, int N, int K, uint32_t seed) {
  std::mt19937 rng(seed);
  Targets t;
  t.dist.assign(static_cast<size_t>(N) * K, 0.0f);
  for (int e = 0; e < N; ++e) {
    const int c = static_cast<int>(rng() % K);
    t.kind.push_back(static_cast<int32_t>(lc.kind));
    t.cls.push_back(c);
    float* d = t.dist.data() + static_cast<size_t>(e) * K;
    if (lc.kind == TargetKind::OneHot) d[c] = 1.0f;
    if (lc.kind == TargetKind::Soft) {
      std::uniform_real_distribution<float> u(0.05f, 1.0f);
      float s = 0;
      for (int j = 0; j < K; ++j) s += d[j] = j == (c + 1) % K ? 0.0f : u(rng);
      for (int j = 0; j < K; ++j) d[j] /= s;
    }
  }
  return t;
}

// The double loss of a batch (summed over images, as backward() with unscaled dlogits computes), and the pieces
// it was evaluated on.
struct RefEval {
  double loss = 0;
  std::vector<double> per_image;
  ref::ForwardTrace trace;
  std::vector<int> branches;
  bool same_piece(const RefEval& o) const { return trace == o.trace && branches == o.branches; }
};

RefEval eval_ref(const Architecture& arch, const std::vector<std::vector<double>>& params, const double* x, int N,
                 const Targets& t, int first_image, const LossCase& lc) {
  RefEval r;
  const int D = arch.input.size(), K = arch.num_classes();
  const auto z = ref::network_forward(arch, params, std::vector<double>(x, x + static_cast<size_t>(N) * D), N,
                                      &r.trace);
  for (int i = 0; i < N; ++i) {
    const int e = first_image + i;
    const auto td = ref::to_double(t.dist.data() + static_cast<size_t>(e) * K, K);
    int branch = 0;
    const double l = ref::loss_one(z.data() + static_cast<size_t>(i) * K, K, td.data(), lc.kind, t.cls[e], lc.loss,
                                   lc.kappa, &branch);
    r.per_image.push_back(l);
    r.loss += l;
    r.branches.push_back(branch);
  }
  return r;
}

constexpr double kFdStep = 1e-6;
constexpr double kKinkMargin = 1e-6;

// Indices to difference in a tensor of `n` elements: all of them when few, else `samples` random ones plus the
// element with the largest analytic gradient.
std::vector<size_t> sample_indices(size_t n, int samples, const float* g, std::mt19937& rng) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  if (n <= static_cast<size_t>(samples)) return idx;
  std::shuffle(idx.begin(), idx.end(), rng);
  idx.resize(samples);
  const size_t top = static_cast<size_t>(
      std::max_element(g, g + n, [](float a, float b) { return std::fabs(a) < std::fabs(b); }) - g);
  if (std::find(idx.begin(), idx.end(), top) == idx.end()) idx.push_back(top);
  return idx;
}

double max_abs(const float* v, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(std::fabs(v[i])));
  return m;
}

// Bounds for gradients: |analytic - fd| <= atol + rtol |fd|, atol relative to the largest gradient of the tensor.
// Measured (NUDGE_PRINT_ERRORS=1) over all cases below: max |analytic - fd| = 1.9e-6 of the tensor's largest
// gradient for input gradients, 4.2e-7 for parameter gradients; the bound leaves a margin of 10x.
constexpr double kGradRtol = 1e-4;
constexpr double kGradAtolPerMax = 2e-5;

void check_network_gradients(const char* arch_text, const LossCase& lc, int N, int param_samples,
                             int pixel_samples, uint32_t seed) {
  const Architecture arch = Architecture::parse(arch_text);
  const int D = arch.input.size(), K = arch.num_classes();
  const Model m = ref::random_model(arch, seed);
  const auto params = ref::param_ptrs(m);
  auto params_d = ref::params_to_double(m);
  const Targets t = make_targets(lc, N, K, seed + 1);

  // Inputs in [0,1] (pixels), redrawn until every ReLU input and pool window is clear of its kink.
  std::vector<float> x;
  RefEval base;
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 50) << "no input clear of the kinks found; pick another seed";
    x = ref::random_uniform(static_cast<size_t>(N) * D, 0, 1, seed + 100 + attempt);
    base = eval_ref(arch, params_d, ref::to_double(x).data(), N, t, 0, lc);
    if (base.trace.min_relu_margin > kKinkMargin && base.trace.min_pool_gap > kKinkMargin) break;
  }
  const auto xd = ref::to_double(x);

  // The float path.
  CpuNetwork net(arch);
  net.forward(params, x.data(), N);
  std::vector<float> dlogits(static_cast<size_t>(N) * K), probs(K);
  for (int e = 0; e < N; ++e)
    loss_forward_backward_one(net.logits() + e * K, K, t.dist.data() + static_cast<size_t>(e) * K, lc.kind, t.cls[e],
                              lc.loss, lc.kappa, probs.data(), dlogits.data() + e * K);
  std::vector<std::vector<float>> grads;
  std::vector<float*> grad_ptrs;
  for (const Tensor& p : m.params) grads.emplace_back(p.size(), std::numeric_limits<float>::quiet_NaN());
  for (auto& g : grads) grad_ptrs.push_back(g.data());
  std::vector<float> dx(static_cast<size_t>(N) * D, std::numeric_limits<float>::quiet_NaN());
  net.backward(params, dlogits.data(), N, &grad_ptrs, dx.data());

  std::mt19937 rng(seed + 2);
  int checked = 0, skipped = 0;
  const auto specs = arch.params();
  for (size_t p = 0; p < specs.size(); ++p) {
    std::vector<float> got;
    std::vector<double> fd;
    for (size_t i : sample_indices(grads[p].size(), param_samples, grads[p].data(), rng)) {
      const double v = params_d[p][i];
      params_d[p][i] = v + kFdStep;
      const RefEval plus = eval_ref(arch, params_d, xd.data(), N, t, 0, lc);
      params_d[p][i] = v - kFdStep;
      const RefEval minus = eval_ref(arch, params_d, xd.data(), N, t, 0, lc);
      params_d[p][i] = v;
      if (!plus.same_piece(base) || !minus.same_piece(base)) {
        ++skipped;
        continue;
      }
      ++checked;
      got.push_back(grads[p][i]);
      fd.push_back((plus.loss - minus.loss) / (2 * kFdStep));
    }
    ref::expect_close(got, fd, kGradRtol, kGradAtolPerMax * std::max(max_abs(grads[p].data(), grads[p].size()), 1e-6),
                      std::string(lc.name) + " d/d" + specs[p].name);
  }

  // Input gradient, from the backend (what the optimize engine uses) and from backward's dx.
  auto backend = make_cpu_backend();
  backend->load_model(m);
  std::vector<float> bprobs(static_cast<size_t>(N) * K), bloss(N), bgrad(static_cast<size_t>(N) * D);
  backend->input_gradient(x.data(), N, t.dist.data(), t.kind.data(), t.cls.data(), lc.loss, lc.kappa, bprobs.data(),
                          bloss.data(), bgrad.data());
  ref::expect_close(bloss.data(), base.per_image.data(), N, 1e-5, 1e-6, std::string(lc.name) + " backend loss");
  const auto ref_logits = ref::network_forward(arch, params_d, xd, N);
  for (int e = 0; e < N; ++e) {
    const auto p = ref::softmax(ref_logits.data() + static_cast<size_t>(e) * K, K);
    ref::expect_close(bprobs.data() + static_cast<size_t>(e) * K, p.data(), K, 1e-5, 1e-7,
                      std::string(lc.name) + " backend probs");
  }
  // Same code, but not bitwise: OpenBLAS's thread count is process-wide and the backend sets it to 1 when built, so
  // a CpuNetwork run before that may have had its GEMMs split differently. Measured max diff 3.7e-9, 1.5e-7 of the
  // largest element.
  ref::expect_close(bgrad, ref::to_double(dx), 1e-5, 1e-6 * std::max(max_abs(dx.data(), dx.size()), 1e-6),
                    std::string(lc.name) + " backend input gradient vs CpuNetwork::backward dx");

  for (int e = 0; e < N; ++e) {
    const float* g = bgrad.data() + static_cast<size_t>(e) * D;
    std::vector<double> xe(xd.begin() + static_cast<size_t>(e) * D, xd.begin() + static_cast<size_t>(e + 1) * D);
    const RefEval base_e = eval_ref(arch, params_d, xe.data(), 1, t, e, lc);
    std::vector<float> got;
    std::vector<double> fd;
    for (size_t i : sample_indices(D, pixel_samples, g, rng)) {
      const double v = xe[i];
      xe[i] = v + kFdStep;
      const RefEval plus = eval_ref(arch, params_d, xe.data(), 1, t, e, lc);
      xe[i] = v - kFdStep;
      const RefEval minus = eval_ref(arch, params_d, xe.data(), 1, t, e, lc);
      xe[i] = v;
      if (!plus.same_piece(base_e) || !minus.same_piece(base_e)) {
        ++skipped;
        continue;
      }
      ++checked;
      got.push_back(g[i]);
      fd.push_back((plus.loss - minus.loss) / (2 * kFdStep));
    }
    ref::expect_close(got, fd, kGradRtol, kGradAtolPerMax * std::max(max_abs(g, D), 1e-6),
                      std::string(lc.name) + " d/dx image " + std::to_string(e));
  }
  // A kink within 1e-6 of a sampled point is rare; many skips would mean the trace comparison is broken.
  EXPECT_LE(skipped * 20, checked) << skipped << " differences straddled a kink, " << checked << " checked";
}

TEST(Gradients, SmallNetworkAllParametersAndPixels) {
  uint32_t seed = 7000;
  for (const LossCase& lc : kLossCases) {
    SCOPED_TRACE(lc.name);
    check_network_gradients("1x8x8:conv3k3,relu,pool2,flatten,dense5", lc, 3, 1000, 1000, seed += 10);
  }
}

// Odd sizes, a flooring pool, pool before relu, a 1x1 convolution and a network that begins with flatten.
TEST(Gradients, OddShapedNetworks) {
  uint32_t seed = 7500;
  for (const char* text : {"3x9x7:conv4k2,pool3,relu,conv2k1,relu,flatten,dense6,relu,dense3",
                           "2x3x3:flatten,dense4,relu,dense3"}) {
    SCOPED_TRACE(text);
    for (const LossCase& lc : kLossCases) {
      SCOPED_TRACE(lc.name);
      check_network_gradients(text, lc, 2, 1000, 1000, seed += 10);
    }
  }
}

TEST(Gradients, ReferenceArchitectureSampled) {
  uint32_t seed = 8000;
  for (const LossCase& lc : kLossCases) {
    SCOPED_TRACE(lc.name);
    check_network_gradients(Architecture::reference_string(), lc, 1, 5, 16, seed += 10);
  }
}

// Differences of the float network itself: the backend's own loss must agree with its own gradient. Here rounding
// limits h: the float loss carries ~1e-7 relative error, so h = 1e-2 gives ~1e-7 * |loss| / 2e-2 = 1e-5 |loss| of
// rounding error in the quotient, and truncation (h^2 times the loss's third derivative through a piecewise linear
// network) of the same order. Points whose +-h segment crosses a kink (in the double twin) are skipped. All 2*D
// perturbed images go through one input_gradient call, which also exercises a batch of more than one micro-batch.
// Measured: max |analytic - fd| = 1.7e-5; bound 1e-4 + 1e-2 |fd|.
TEST(Gradients, FloatDifferencesOfBackendLoss) {
  const Architecture arch = Architecture::parse("1x8x8:conv3k3,relu,pool2,flatten,dense5");
  const int D = arch.input.size(), K = arch.num_classes();
  uint32_t seed = 8500;
  for (const LossCase& lc : kLossCases) {
    SCOPED_TRACE(lc.name);
    const Model m = ref::random_model(arch, seed += 10);
    const auto params_d = ref::params_to_double(m);
    auto backend = make_cpu_backend();
    backend->load_model(m);
    const Targets t1 = make_targets(lc, 1, K, seed + 1);
    const std::vector<float> x = ref::random_uniform(D, 0.05f, 0.95f, seed + 2);
    constexpr float h = 1e-2f;
    // Image 0 is x itself; images 1 + 2i and 2 + 2i are x + h e_i and x - h e_i. All share the one target.
    const int n = 1 + 2 * D;
    std::vector<float> xs;
    Targets t;
    for (int e = 0; e < n; ++e) {
      xs.insert(xs.end(), x.begin(), x.end());
      if (e > 0) xs[static_cast<size_t>(e) * D + (e - 1) / 2] += e % 2 ? h : -h;
      t.dist.insert(t.dist.end(), t1.dist.begin(), t1.dist.end());
      t.kind.push_back(t1.kind[0]);
      t.cls.push_back(t1.cls[0]);
    }
    std::vector<float> probs(static_cast<size_t>(n) * K), loss(n), grad(static_cast<size_t>(n) * D);
    backend->input_gradient(xs.data(), n, t.dist.data(), t.kind.data(), t.cls.data(), lc.loss, lc.kappa,
                            probs.data(), loss.data(), grad.data());
    const auto xsd = ref::to_double(xs);
    const RefEval base = eval_ref(arch, params_d, xsd.data(), 1, t, 0, lc);
    std::vector<float> got;
    std::vector<double> fd;
    for (int i = 0; i < D; ++i) {
      const int ep = 1 + 2 * i, em = 2 + 2 * i;
      const RefEval plus = eval_ref(arch, params_d, xsd.data() + static_cast<size_t>(ep) * D, 1, t, ep, lc);
      const RefEval minus = eval_ref(arch, params_d, xsd.data() + static_cast<size_t>(em) * D, 1, t, em, lc);
      if (!plus.same_piece(base) || !minus.same_piece(base)) continue;
      got.push_back(grad[i]);
      // (x + h) - (x - h) in float is not exactly 2h; divide by the step actually taken.
      const double step = xsd[static_cast<size_t>(ep) * D + i] - xsd[static_cast<size_t>(em) * D + i];
      fd.push_back((static_cast<double>(loss[ep]) - loss[em]) / step);
    }
    EXPECT_GE(got.size(), static_cast<size_t>(D / 2)) << "too many pixels near a kink at h = 1e-2";
    ref::expect_close(got, fd, 1e-2, 1e-4, std::string(lc.name) + " float central differences, h = 1e-2");
  }
}

// ---- losses ---------------------------------------------------------------------------------------------------

// d loss / d logits of the double loss by central differences; *crossed is set if +-h changes the piece.
std::vector<double> fd_dlogits(const std::vector<double>& z, const std::vector<double>& t, TargetKind kind, int cls,
                               LossKind loss, double kappa, double h, bool* crossed) {
  const int K = static_cast<int>(z.size());
  int b0 = 0, bp = 0, bm = 0;
  ref::loss_one(z.data(), K, t.data(), kind, cls, loss, kappa, &b0);
  std::vector<double> g(K), zz = z;
  *crossed = false;
  for (int j = 0; j < K; ++j) {
    zz[j] = z[j] + h;
    const double lp = ref::loss_one(zz.data(), K, t.data(), kind, cls, loss, kappa, &bp);
    zz[j] = z[j] - h;
    const double lm = ref::loss_one(zz.data(), K, t.data(), kind, cls, loss, kappa, &bm);
    zz[j] = z[j];
    *crossed |= bp != b0 || bm != b0;
    g[j] = (lp - lm) / (2 * h);
  }
  return g;
}

struct LossOut {
  float loss;
  std::vector<float> probs, dz;
};

LossOut run_loss(const std::vector<float>& z, const std::vector<float>& t, TargetKind kind, int cls, LossKind loss,
                 float kappa) {
  const int K = static_cast<int>(z.size());
  LossOut o;
  o.probs.assign(K, std::numeric_limits<float>::quiet_NaN());
  o.dz.assign(K, std::numeric_limits<float>::quiet_NaN());
  o.loss = loss_forward_backward_one(z.data(), K, t.data(), kind, cls, loss, kappa, o.probs.data(), o.dz.data());
  return o;
}

void expect_all_finite(const LossOut& o, const std::string& what) {
  EXPECT_TRUE(std::isfinite(o.loss)) << what << ": loss " << o.loss;
  for (size_t j = 0; j < o.dz.size(); ++j) {
    EXPECT_TRUE(std::isfinite(o.dz[j])) << what << ": dlogits[" << j << "] = " << o.dz[j];
    EXPECT_TRUE(std::isfinite(o.probs[j])) << what << ": probs[" << j << "] = " << o.probs[j];
  }
}

std::vector<float> soft_target(int K, uint32_t seed, int zero_at) {
  auto t = ref::random_uniform(K, 0.05f, 1.0f, seed);
  t[zero_at] = 0.0f;
  const float s = std::accumulate(t.begin(), t.end(), 0.0f);
  for (float& v : t) v /= s;
  return t;
}

// Every (loss, target kind) against the double formulas: value, probabilities and the gradient by differences.
// K = 100 takes the untargeted loss's path for more than 64 classes. Measured: loss abs err <= 2.9e-7, dlogits
// abs err <= 3e-8.
TEST(Losses, MatchReferenceOnRandomLogits) {
  uint32_t seed = 9000;
  for (int K : {2, 3, 10, 100}) {
    for (const LossCase& lc : kLossCases) {
      const std::string name = std::string(lc.name) + " K=" + std::to_string(K);
      SCOPED_TRACE(name);
      const auto z = ref::random_uniform(K, -4, 4, ++seed);
      const int cls = static_cast<int>(seed % K);
      std::vector<float> t(K, 0.0f);
      if (lc.kind == TargetKind::OneHot) t[cls] = 1.0f;
      if (lc.kind == TargetKind::Soft) t = soft_target(K, ++seed, (cls + 1) % K);
      const LossOut o = run_loss(z, t, lc.kind, cls, lc.loss, lc.kappa);
      const auto zd = ref::to_double(z), td = ref::to_double(t);
      const double l = ref::loss_one(zd.data(), K, td.data(), lc.kind, cls, lc.loss, lc.kappa);
      ref::expect_close(&o.loss, &l, 1, 1e-6, 1e-6, name + " loss");
      ref::expect_close(o.probs, ref::softmax(zd.data(), K), 1e-6, 1e-8, name + " probs");
      bool crossed = false;
      const auto g = fd_dlogits(zd, td, lc.kind, cls, lc.loss, lc.kappa, 1e-6, &crossed);
      ASSERT_FALSE(crossed);
      ref::expect_close(o.dz, g, 1e-5, 1e-6, name + " dlogits");
    }
  }
}

// Logits of +-1e4: log-sum-exp keeps every loss and gradient finite and on the double formula. The float loss is
// assembled from float log-sum-exps of size 1e4 (ulp 1e-3), so it is only good to about an ulp of 1e4 in absolute
// terms: measured max abs err 8.4e-4 (untargeted CE with the label on top, loss 0.71); the bound is 4e-3.
TEST(Losses, HugeLogitsStayFinite) {
  const int K = 10;
  std::vector<float> z = {1e4f, -1e4f, 0.0f, 1e4f - 1.0f, -1e4f, 3.0f, -1e4f + 2.0f, 1e4f - 0.5f, -5.0f, 1e4f - 30.0f};
  std::vector<float> onehot_top(K, 0.0f), onehot_bottom(K, 0.0f);
  onehot_top[0] = 1;
  onehot_bottom[1] = 1;
  // Weight on the top logits and zeros exactly where logits are -1e4 (so 0 * log p must be taken as 0).
  std::vector<float> soft_zeros = {0.3f, 0.0f, 0.1f, 0.2f, 0.0f, 0.1f, 0.0f, 0.2f, 0.1f, 0.0f};
  // Weight on the -1e4 logits too: a loss of ~2e4, still finite.
  std::vector<float> soft_far = {0.1f, 0.2f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.05f, 0.05f};
  const std::vector<float> none(K, 0.0f);
  struct Case {
    const char* name;
    const std::vector<float>* t;
    TargetKind kind;
    int cls;
    LossKind loss;
  };
  const Case cases[] = {
      {"ce one-hot at the top", &onehot_top, TargetKind::OneHot, 0, LossKind::CrossEntropy},
      {"ce one-hot at -1e4", &onehot_bottom, TargetKind::OneHot, 1, LossKind::CrossEntropy},
      {"ce soft with zeros", &soft_zeros, TargetKind::Soft, 0, LossKind::CrossEntropy},
      {"kl soft with zeros", &soft_zeros, TargetKind::Soft, 0, LossKind::KL},
      {"kl soft on -1e4 logits", &soft_far, TargetKind::Soft, 0, LossKind::KL},
      {"untargeted ce, label on top", &none, TargetKind::Untargeted, 0, LossKind::CrossEntropy},
      {"untargeted ce, label at -1e4", &none, TargetKind::Untargeted, 1, LossKind::CrossEntropy},
      {"untargeted kl, label on top", &none, TargetKind::Untargeted, 0, LossKind::KL},
      {"cw one-hot", &onehot_bottom, TargetKind::OneHot, 1, LossKind::CarliniWagner},
      {"cw untargeted", &none, TargetKind::Untargeted, 0, LossKind::CarliniWagner},
  };
  const auto zd = ref::to_double(z);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const LossOut o = run_loss(z, *c.t, c.kind, c.cls, c.loss, 0.0f);
    expect_all_finite(o, c.name);
    EXPECT_NEAR(std::accumulate(o.probs.begin(), o.probs.end(), 0.0), 1.0, 1e-6);
    const auto td = ref::to_double(*c.t);
    const double l = ref::loss_one(zd.data(), K, td.data(), c.kind, c.cls, c.loss, 0.0);
    ref::expect_close(&o.loss, &l, 1, 1e-6, 4e-3, std::string(c.name) + " loss");
    bool crossed = false;
    const auto g = fd_dlogits(zd, td, c.kind, c.cls, c.loss, 0.0, 1e-3, &crossed);
    ASSERT_FALSE(crossed);
    ref::expect_close(o.dz, g, 1e-5, 1e-6, std::string(c.name) + " dlogits");
  }
}

TEST(Losses, KlOfTheSoftmaxItselfIsZero) {
  for (uint32_t seed : {9100u, 9101u, 9102u}) {
    const int K = 10;
    const auto z = ref::random_uniform(K, -5, 5, seed);
    std::vector<float> p(K);
    loss_forward_backward_one(z.data(), K, std::vector<float>(K, 0.1f).data(), TargetKind::Soft,
                              0, LossKind::KL, 0, p.data(), nullptr);
    const LossOut o = run_loss(z, p, TargetKind::Soft, 0, LossKind::KL, 0);
    EXPECT_NEAR(o.loss, 0.0f, 1e-6);
    for (int j = 0; j < K; ++j) EXPECT_NEAR(o.dz[j], 0.0f, 1e-7) << "j=" << j;
    EXPECT_NEAR(kl_divergence(p.data(), o.probs.data(), K), 0.0f, 1e-6);
    // Cross-entropy to the same target is its entropy: the two losses differ exactly by H(t).
    const LossOut ce = run_loss(z, p, TargetKind::Soft, 0, LossKind::CrossEntropy, 0);
    double entropy = 0;
    for (float v : p) entropy -= v * std::log(static_cast<double>(v));
    EXPECT_NEAR(ce.loss, entropy, 1e-5);
  }
}

TEST(Losses, CrossEntropyGradientIsPMinusTWithZerosInTarget) {
  const int K = 7;
  const auto z = ref::random_uniform(K, -3, 3, 9200);
  for (const auto& t : {std::vector<float>{0, 0, 1, 0, 0, 0, 0}, soft_target(K, 9201, 4),
                        std::vector<float>{0.5f, 0, 0, 0, 0.5f, 0, 0}}) {
    for (LossKind loss : {LossKind::CrossEntropy, LossKind::KL}) {
      const LossOut o = run_loss(z, t, TargetKind::Soft, 0, loss, 0);
      double expect_loss = 0;
      for (int j = 0; j < K; ++j) {
        EXPECT_NEAR(o.dz[j], o.probs[j] - t[j], 2e-7) << "j=" << j << " t_j=" << t[j];
        if (t[j] > 0)
          expect_loss -= t[j] * (std::log(static_cast<double>(o.probs[j])) -
                                 (loss == LossKind::KL ? std::log(static_cast<double>(t[j])) : 0.0));
      }
      EXPECT_NEAR(o.loss, expect_loss, 1e-5);
    }
  }
}

TEST(Losses, CarliniWagnerMarginAndKappa) {
  const std::vector<float> z = {1, 3, 2, -1};
  const std::vector<float> none(4, 0.0f);
  // Targeted at class 0: margin = max_{j!=0} z_j - z_0 = 3 - 1 = 2, gradient +1 on the best other, -1 on the target.
  LossOut o = run_loss(z, none, TargetKind::OneHot, 0, LossKind::CarliniWagner, 0);
  EXPECT_FLOAT_EQ(o.loss, 2.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{-1, 1, 0, 0}));
  // Targeted at the top class 1: margin 2 - 3 = -1; beyond kappa = 0.5 the loss is -kappa and the gradient zero.
  o = run_loss(z, none, TargetKind::OneHot, 1, LossKind::CarliniWagner, 0.5f);
  EXPECT_FLOAT_EQ(o.loss, -0.5f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 0, 0, 0}));
  // ...and within kappa = 2 it is the margin, still active.
  o = run_loss(z, none, TargetKind::OneHot, 1, LossKind::CarliniWagner, 2.0f);
  EXPECT_FLOAT_EQ(o.loss, -1.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, -1, 1, 0}));
  // Exactly at -kappa the hinge is flat.
  o = run_loss(z, none, TargetKind::OneHot, 1, LossKind::CarliniWagner, 1.0f);
  EXPECT_FLOAT_EQ(o.loss, -1.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 0, 0, 0}));
  // Untargeted, true label 1 (on top): margin = z_1 - max_{j!=1} z_j = 1, pushing z_1 down and z_2 up.
  o = run_loss(z, none, TargetKind::Untargeted, 1, LossKind::CarliniWagner, 0);
  EXPECT_FLOAT_EQ(o.loss, 1.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 1, -1, 0}));
  // Untargeted, label 3 already far below: margin -4 < -kappa = -3, so -3 and no gradient.
  o = run_loss(z, none, TargetKind::Untargeted, 3, LossKind::CarliniWagner, 3.0f);
  EXPECT_FLOAT_EQ(o.loss, -3.0f);
  EXPECT_EQ(o.dz, (std::vector<float>{0, 0, 0, 0}));
  // The probabilities are written whatever the loss.
  EXPECT_NEAR(std::accumulate(o.probs.begin(), o.probs.end(), 0.0), 1.0, 1e-6);
}

TEST(Losses, GoalMetForEachTargetKind) {
  const std::vector<float> p = {0.1f, 0.6f, 0.25f, 0.05f};
  const std::vector<float> none(4, 0.0f);
  StepConfig cfg;
  cfg.stop_prob = 0;
  // One-hot: argmax reaches the target, or p[target] >= stop_prob when that is set.
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 1, cfg));
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 2, cfg));
  cfg.stop_prob = 0.6f;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 1, cfg));
  cfg.stop_prob = 0.7f;
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 1, cfg));
  cfg.stop_prob = 0.2f;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::OneHot, 2, cfg)) << "p = 0.25 >= 0.2 without argmax";
  // Untargeted: the argmax leaves the label, and p[label] <= 1 - stop_prob when that is set.
  cfg.stop_prob = 0;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 0, cfg));
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 1, cfg));
  cfg.stop_prob = 0.85f;
  EXPECT_TRUE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 0, cfg)) << "0.1 <= 0.15";
  EXPECT_FALSE(goal_met(p.data(), 4, none.data(), TargetKind::Untargeted, 2, cfg)) << "0.25 > 0.15";
  // Soft: KL(target || p) <= stop_kl.
  cfg = StepConfig{};
  EXPECT_TRUE(goal_met(p.data(), 4, p.data(), TargetKind::Soft, 0, cfg));
  const std::vector<float> t = {0.25f, 0.25f, 0.25f, 0.25f};
  const float kl = kl_divergence(t.data(), p.data(), 4);
  cfg.stop_kl = kl * 1.01f;
  EXPECT_TRUE(goal_met(p.data(), 4, t.data(), TargetKind::Soft, 0, cfg));
  cfg.stop_kl = kl * 0.99f;
  EXPECT_FALSE(goal_met(p.data(), 4, t.data(), TargetKind::Soft, 0, cfg));
  // A target with zeros where p is tiny: those terms are 0, not NaN.
  const std::vector<float> t0 = {0.0f, 1.0f, 0.0f, 0.0f};
  const std::vector<float> p0 = {0.0f, 1.0f, 0.0f, 0.0f};
  cfg.stop_kl = 1e-6f;
  EXPECT_TRUE(goal_met(p0.data(), 4, t0.data(), TargetKind::Soft, 1, cfg));
}

// ---- input update and projection ------------------------------------------------------------------------------

// ||x - x0|| in double, L2 and Linf.
double l2_dist(const std::vector<float>& x, const std::vector<float>& x0) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += (static_cast<double>(x[i]) - x0[i]) * (static_cast<double>(x[i]) - x0[i]);
  return std::sqrt(s);
}
double linf_dist(const std::vector<float>& x, const std::vector<float>& x0) {
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(x[i]) - x0[i]));
  return m;
}

// The projection is computed in float: x0 + clip(...) and x0 + d*(eps/len) round to the float grid, which can leave
// a point outside the exact ball by a rounding error. Measured worst overshoot over the cases below (D up to 1000,
// eps up to 2): Linf 3.0e-8 (half an ulp of the pixel values), L2 1.1e-8. The bounds: one ulp of 1 for Linf; for L2
// 1e-7 plus 1e-7 of eps (the rounding of the scale factor eps/len enters relative to eps).
constexpr double kLinfSlack = 1.2e-7;
double l2_slack(double eps) { return 1e-7 * (1 + eps); }

TEST(InputStep, UpdatesStayInUnitIntervalAndBall) {
  std::mt19937 rng(9300);
  std::uniform_real_distribution<float> u01(0, 1);
  double worst_linf = 0, worst_l2 = 0;
  for (InputOptimizer opt : {InputOptimizer::Adam, InputOptimizer::Sgd, InputOptimizer::Sign}) {
    for (Norm norm : {Norm::None, Norm::Linf, Norm::L2}) {
      for (int trial = 0; trial < 20; ++trial) {
        const int D = 1 + static_cast<int>(rng() % 800);
        const float eps = norm == Norm::L2 ? 3.0f * u01(rng) : 0.5f * u01(rng);
        StepConfig cfg;
        cfg.optimizer = opt;
        cfg.norm = norm;
        cfg.lr = 0.5f * u01(rng);
        std::vector<float> x0 = ref::random_uniform(D, 0, 1, rng());
        // Some pixels on the box edges, where the clamp must hold them.
        x0[0] = 0.0f;
        if (D > 1) x0[1] = 1.0f;
        std::vector<float> x = x0, m(D, 0.0f), v(D, 0.0f);
        for (int t = 1; t <= 5; ++t) {
          const auto g = ref::random_uniform(D, -10, 10, rng());
          input_update_one(x.data(), g.data(), m.data(), v.data(), t, x0.data(), D, eps, cfg);
          for (int i = 0; i < D; ++i)
            ASSERT_TRUE(x[i] >= 0.0f && x[i] <= 1.0f) << "pixel " << i << " = " << x[i] << " after step " << t;
          if (norm == Norm::Linf) {
            worst_linf = std::max(worst_linf, linf_dist(x, x0) - eps);
            ASSERT_LE(linf_dist(x, x0), eps + kLinfSlack) << "step " << t << ", eps " << eps;
          }
          if (norm == Norm::L2) {
            worst_l2 = std::max(worst_l2, l2_dist(x, x0) - eps);
            ASSERT_LE(l2_dist(x, x0), eps + l2_slack(eps)) << "step " << t << ", eps " << eps << ", D " << D;
          }
        }
      }
    }
  }
  if (std::getenv("NUDGE_PRINT_ERRORS"))
    std::printf("[errors] worst overshoot: Linf %.3g absolute, L2 %.3g absolute\n", worst_linf, worst_l2);
}

TEST(InputStep, ProjectionOfFarPoints) {
  std::mt19937 rng(9400);
  double worst_linf = 0, worst_l2 = 0;
  std::uniform_real_distribution<float> u01(0, 1);
  for (int trial = 0; trial < 200; ++trial) {
    const int D = 1 + static_cast<int>(rng() % 1000);
    const float eps = trial % 10 == 0 ? 0.0f : 2.0f * u01(rng);
    const Norm norm = trial % 2 ? Norm::Linf : Norm::L2;
    const auto x0 = ref::random_uniform(D, 0, 1, rng());
    auto x = ref::random_uniform(D, -3, 4, rng());
    project_one(x.data(), x0.data(), D, eps, norm);
    for (int i = 0; i < D; ++i) ASSERT_TRUE(x[i] >= 0.0f && x[i] <= 1.0f) << "pixel " << i << " = " << x[i];
    if (norm == Norm::Linf) {
      worst_linf = std::max(worst_linf, linf_dist(x, x0) - eps);
      ASSERT_LE(linf_dist(x, x0), eps + kLinfSlack) << "eps " << eps;
    } else {
      worst_l2 = std::max(worst_l2, l2_dist(x, x0) - eps);
      ASSERT_LE(l2_dist(x, x0), eps + l2_slack(eps)) << "eps " << eps << ", D " << D;
    }
  }
  if (std::getenv("NUDGE_PRINT_ERRORS"))
    std::printf("[errors] worst overshoot: Linf %.3g absolute, L2 %.3g absolute\n", worst_linf, worst_l2);
  // Points already inside the ball (and the box) are left exactly as they are.
  const auto x0 = ref::random_uniform(100, 0.2f, 0.8f, 9401);
  auto x = x0;
  for (int i = 0; i < 100; ++i) x[i] += 0.001f * ((i % 3) - 1);
  for (Norm norm : {Norm::Linf, Norm::L2, Norm::None}) {
    auto y = x;
    project_one(y.data(), x0.data(), 100, 0.1f, norm);
    EXPECT_EQ(y, x) << to_string(norm);
  }
}

// Adam's first step: mhat = g and vhat = g^2 exactly, so each pixel moves by lr * g / (|g| + adam_eps), i.e.
// lr * sign(g) up to adam_eps / |g| (<= 1e-4 here). Sign moves by exactly lr; SGD by lr * g.
TEST(InputStep, FirstStepSizes) {
  const int D = 500;
  const auto x0 = ref::random_uniform(D, 0.25f, 0.75f, 9500);
  auto g = ref::random_uniform(D, -10, 10, 9501);
  for (int i = 0; i < D; ++i)
    if (std::fabs(g[i]) < 1e-3f) g[i] = 1e-3f;
  g[0] = 0.0f;  // no gradient, no move (for every optimizer)
  StepConfig cfg;
  cfg.lr = 0.01f;
  for (InputOptimizer opt : {InputOptimizer::Adam, InputOptimizer::Sign, InputOptimizer::Sgd}) {
    SCOPED_TRACE(to_string(opt));
    cfg.optimizer = opt;
    auto x = x0;
    std::vector<float> m(D, 0.0f), v(D, 0.0f);
    cfg.lr = opt == InputOptimizer::Sgd ? 0.001f : 0.01f;
    input_update_one(x.data(), g.data(), m.data(), v.data(), 1, x0.data(), D, 0.0f, cfg);
    for (int i = 0; i < D; ++i) {
      const double sign = (g[i] > 0) - (g[i] < 0);
      const double expect = opt == InputOptimizer::Sgd ? x0[i] - static_cast<double>(cfg.lr) * g[i]
                                                       : x0[i] - cfg.lr * sign;
      ASSERT_NEAR(x[i], expect, cfg.lr * 1e-4 + 1e-7) << "pixel " << i << ", g = " << g[i];
    }
    if (opt == InputOptimizer::Adam) {
      for (int i = 0; i < D; ++i) {
        ASSERT_NEAR(m[i], 0.1f * g[i], 1e-6f * std::fabs(g[i]));
        ASSERT_NEAR(v[i], 0.001f * g[i] * g[i], 1e-6f * g[i] * g[i] + 1e-12f);
      }
    }
  }
}

}  // namespace
}  // namespace nudge
