// Whole-network gradients of the CPU path against central differences, on small networks of odd shapes and on the
// reference architecture (sampled), for every loss and target kind (tests/support/loss_cases.h).
//
// The float path under test is CpuNetwork::forward -> loss_forward_backward_one (dlogits)
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
#include "loss_cases.h"
#include "model.h"
#include "optimize_math.h"
#include "reference_math.h"

namespace nudge {
namespace {

using testing_support::kLossCases;
using testing_support::LossCase;

// ---- whole-network gradients ----------------------------------------------------------------------------------

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

// Odd sizes, a flooring pool, pool before relu, a 1x1 convolution, a network that begins with flatten, and the
// windowed layers (stride, padding, overlapping max-pool windows, average pooling).
TEST(Gradients, OddShapedNetworks) {
  uint32_t seed = 7500;
  for (const char* text : {"3x9x7:conv4k2,pool3,relu,conv2k1,relu,flatten,dense6,relu,dense3",
                           "2x3x3:flatten,dense4,relu,dense3",
                           // strides, padding, overlapping max windows and average pooling
                           "1x12x11:conv3k3s2p1,relu,pool3s2p1,conv4k2p1,avgpool2,relu,flatten,dense4",
                           "2x9x9:conv3k4s2p2,avgpool2s1,relu,pool2s1,flatten,dense3"}) {
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

}  // namespace
}  // namespace nudge
