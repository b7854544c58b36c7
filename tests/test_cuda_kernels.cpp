// Every custom kernel in kernels/ and the cuDNN/cuBLAS wrappers against their CPU twins, on fresh seeded random
// inputs (NUDGE_TEST_SEED=<seed> replays a run). Outputs are poisoned with NaN before each launch and guarded by a
// sentinel region, so an unwritten element or a stray write fails.
//
// Tolerances: |gpu - ref| <= atol + rtol |ref| with rtol 1e-4 for FP32 arithmetic. Kernels that do the same float
// operations as their twin (bias, ReLU, pooling, gathers, noise, bookkeeping copies) must match bit for bit. Sums
// get a per-element atol from the worst-case FP32 summation bound, m u sum|terms| (m terms, u = 2^-24), computed by
// running the CPU twin on absolute values; where the GPU contracts to FMAs or uses its own powf the atol is a few
// ulps of the values' scale, stated at each use. These are bounds from the arithmetic, not yet from measurement on
// a GPU: the first GPU run prints the measured maxima on any failure, and bounds should then be tightened.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "counter_rng.h"
#include "cpu_layers.h"
#include "optimize_math.h"
#include "optimize_types.h"
#include "start_images.h"

#if NUDGE_HAVE_CUDA
#include "adam.cuh"
#include "bias_grad.cuh"
#include "bias_relu.cuh"
#include "compact_active.cuh"
#include "cublas_dense.h"
#include "cuda_context.h"
#include "cudnn_conv.h"
#include "staged_upload.h"
#include "gather_rows.cuh"
#include "input_step.cuh"
#include "maxpool.cuh"
#include "noise.cuh"
#include "optimize_track.cuh"
#include "row_argmax.cuh"
#include "softmax_loss.cuh"
#include "trades_loss.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::GuardedBuffer;
using test::Tolerance;

constexpr double kUlp = 1.0 / (1 << 24);  // unit roundoff of float (round to nearest)

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    NUDGE_REQUIRE_CUDA_DEVICE();
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    rng_.seed(test::test_seed() ^ std::hash<std::string>{}(name));
  }

  int randint(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  float uniform01() { return std::uniform_real_distribution<float>(0.0f, 1.0f)(rng_); }
  std::vector<float> normal(size_t n, float sd = 1.0f) {
    std::normal_distribution<float> d(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }
  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }
  // `count` distinct values of [0, range) in random order.
  std::vector<int32_t> sample(int count, int range) {
    std::vector<int32_t> v(range);
    std::iota(v.begin(), v.end(), 0);
    std::shuffle(v.begin(), v.end(), rng_);
    v.resize(count);
    return v;
  }

  std::mt19937_64 rng_;
};

std::vector<float> abs_of(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

// Worst-case FP32 summation error of sums of m terms whose absolute values sum to abs_sum[i].
std::vector<double> sum_bound(const std::vector<float>& abs_sum, double m) {
  std::vector<double> atol(abs_sum.size());
  for (size_t i = 0; i < abs_sum.size(); ++i) atol[i] = 2.0 * m * kUlp * abs_sum[i] + 1e-30;
  return atol;
}

// ---- bias, ReLU --------------------------------------------------------------------------------------------------

TEST_F(CudaKernels, BiasAddAndRelu) {
  const int N = randint(1, 5), C = randint(1, 40), P = randint(1, 700);
  const size_t total = static_cast<size_t>(N) * C * P;
  const std::vector<float> x = normal(total), b = normal(C);
  std::vector<float> with_bias(total), relu_bias(total), relu_only(total);
  for (size_t i = 0; i < total; ++i) {
    with_bias[i] = x[i] + b[(i / P) % C];
    relu_bias[i] = with_bias[i] > 0 ? with_bias[i] : 0.0f;
  }
  cpu::relu_forward(x.data(), total, relu_only.data());
  GuardedBuffer<float> bd(b), xd(x), yd(total);

  GuardedBuffer<float> inplace(x);
  cuda::bias_add_cuda(inplace.get(), bd.get(), N, C, P, 0);
  // Exact: one float add (and a max) per element on both sides; nothing to contract or reorder.
  EXPECT_TRUE(all_equal("bias_add", inplace.download(), with_bias));
  EXPECT_TRUE(inplace.guard_intact());

  cuda::bias_relu_cuda(xd.get(), bd.get(), yd.get(), N, C, P, 0);
  EXPECT_TRUE(all_equal("bias_relu", yd.download(), relu_bias));
  EXPECT_TRUE(yd.guard_intact());

  yd.poison();
  cuda::bias_relu_cuda(xd.get(), nullptr, yd.get(), N, C, P, 0);
  EXPECT_TRUE(all_equal("relu", yd.download(), relu_only));
  EXPECT_TRUE(yd.guard_intact());

  GuardedBuffer<float> inplace_relu(x);
  cuda::bias_relu_cuda(inplace_relu.get(), bd.get(), inplace_relu.get(), N, C, P, 0);
  EXPECT_TRUE(all_equal("bias_relu in place", inplace_relu.download(), relu_bias));
  EXPECT_TRUE(xd.guard_intact());
}

TEST_F(CudaKernels, ReluBackward) {
  const size_t n = randint(1, 100000);
  std::vector<float> y = normal(n);
  cpu::relu_forward(y.data(), n, y.data());
  const std::vector<float> dy = normal(n);
  std::vector<float> ref(n);
  cpu::relu_backward(y.data(), dy.data(), n, ref.data());
  GuardedBuffer<float> yd(y), dyd(dy), dxd(n);
  cuda::relu_backward_cuda(yd.get(), dyd.get(), dxd.get(), n, 0);
  // Exact: a select per element.
  EXPECT_TRUE(all_equal("relu_backward", dxd.download(), ref));
  EXPECT_TRUE(dxd.guard_intact());
  cuda::relu_backward_cuda(yd.get(), dyd.get(), dyd.get(), n, 0);  // in place
  EXPECT_TRUE(all_equal("relu_backward in place", dyd.download(), ref));
}

TEST_F(CudaKernels, BiasGrad) {
  for (int P : {1, randint(2, 700)}) {
    const int N = randint(1, 9), C = randint(1, 40);
    SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " P=" + std::to_string(P));
    const std::vector<float> dy = normal(static_cast<size_t>(N) * C * P);
    // The twin: the db loop of cpu::conv2d_backward_filter (per image a float sum over positions, then over images).
    std::vector<float> ref(C, 0.0f), abs_sum(C, 0.0f);
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) {
        float s = 0;
        for (int p = 0; p < P; ++p) {
          s += dy[(static_cast<size_t>(n) * C + c) * P + p];
          abs_sum[c] += std::fabs(dy[(static_cast<size_t>(n) * C + c) * P + p]);
        }
        ref[c] += s;
      }
    GuardedBuffer<float> dyd(dy), db(C);
    cuda::bias_grad_cuda(dyd.get(), N, C, P, db.get(), 0);
    const std::vector<double> atol = sum_bound(abs_sum, N + P);
    EXPECT_TRUE(all_close("bias_grad", db.download(), ref, {0, 1e-4}, &atol));
    EXPECT_TRUE(db.guard_intact());
  }
  GuardedBuffer<float> empty(std::vector<float>{}), db(3);
  cuda::bias_grad_cuda(empty.get(), 0, 3, 5, db.get(), 0);
  EXPECT_TRUE(all_equal("bias_grad of an empty batch", db.download(), std::vector<float>(3, 0.0f)));
}

// ---- max-pooling -------------------------------------------------------------------------------------------------

TEST_F(CudaKernels, MaxPoolForwardBackward) {
  for (int ties = 0; ties < 2; ++ties)
    for (int p : {2, 3}) {
      const int N = randint(1, 4), C = randint(1, 6), H = randint(p, 17), W = randint(p, 17);
      SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " H=" + std::to_string(H) + " W=" +
                   std::to_string(W) + " p=" + std::to_string(p) + (ties ? " (small integers: many ties)" : ""));
      const int Ho = H / p, Wo = W / p;
      const size_t in_n = static_cast<size_t>(N) * C * H * W, out_n = static_cast<size_t>(N) * C * Ho * Wo;
      std::vector<float> x = normal(in_n);
      if (ties)
        for (float& v : x) v = static_cast<float>(randint(0, 2));
      std::vector<float> y_ref(out_n), dx_ref(in_n);
      std::vector<int32_t> a_ref(out_n);
      cpu::maxpool_forward(x.data(), N, {C, H, W}, p, y_ref.data(), a_ref.data());
      const std::vector<float> dy = normal(out_n);
      cpu::maxpool_backward(dy.data(), a_ref.data(), N, {C, H, W}, p, dx_ref.data());

      GuardedBuffer<float> xd(x), yd(out_n), dyd(dy), dxd(in_n);
      GuardedBuffer<int32_t> ad(out_n);
      cuda::maxpool_forward_cuda(xd.get(), N, C, H, W, p, yd.get(), ad.get(), 0);
      // Exact: comparisons and copies only (ties broken by the same first-index rule).
      EXPECT_TRUE(all_equal("maxpool y", yd.download(), y_ref));
      EXPECT_TRUE(all_equal("maxpool argmax", ad.download(), a_ref));
      cuda::maxpool_backward_cuda(dyd.get(), ad.get(), N, C, H, W, p, dxd.get(), 0);
      EXPECT_TRUE(all_equal("maxpool dx", dxd.download(), dx_ref));
      EXPECT_TRUE(yd.guard_intact());
      EXPECT_TRUE(ad.guard_intact());
      EXPECT_TRUE(dxd.guard_intact());
    }
}

// ---- softmax and losses ------------------------------------------------------------------------------------------

struct LossCase {
  int rows, entries, K;
  std::vector<int32_t> entry, kind, cls;
  std::vector<float> logits, dist;
};

class CudaLossKernels : public CudaKernels {
 protected:
  LossCase make_case(int K) {
    LossCase c;
    c.K = K;
    c.rows = 257;  // three blocks of 128, the last one partial
    c.entries = 300;
    c.entry = sample(c.rows, c.entries);
    c.logits = normal(static_cast<size_t>(c.rows) * K, 4.0f);
    for (int i = 0; i < c.rows; ++i)
      if (randint(0, 9) == 0)  // logits of +-1e4: the log-sum-exp must stay finite
        for (int j = 0; j < K; ++j) c.logits[static_cast<size_t>(i) * K + j] *= 2500.0f;
    c.kind.resize(c.entries);
    c.cls.resize(c.entries);
    c.dist.assign(static_cast<size_t>(c.entries) * K, 0.0f);
    for (int e = 0; e < c.entries; ++e) {
      c.kind[e] = randint(0, 2);
      c.cls[e] = randint(0, K - 1);
      float* t = c.dist.data() + static_cast<size_t>(e) * K;
      if (c.kind[e] == static_cast<int>(TargetKind::OneHot)) t[c.cls[e]] = 1.0f;
      if (c.kind[e] == static_cast<int>(TargetKind::Soft)) {
        float s = 0;
        for (int j = 0; j < K; ++j) s += t[j] = randint(0, 2) == 0 ? 0.0f : uniform01();
        if (s == 0) s = t[0] = 1.0f;
        for (int j = 0; j < K; ++j) t[j] /= s;
      }
    }
    return c;
  }
};

TEST_F(CudaLossKernels, SoftmaxLossAllKinds) {
  for (int K : {2, 10, 80})  // 80 > 64: the CPU twin's float path for untargeted gradients
    for (LossKind loss : {LossKind::CrossEntropy, LossKind::KL, LossKind::CarliniWagner}) {
      SCOPED_TRACE(std::string("loss ") + to_string(loss) + " K=" + std::to_string(K));
      const LossCase c = make_case(K);
      const float kappa = 0.3f;
      const size_t rk = static_cast<size_t>(c.rows) * K;
      std::vector<float> probs_ref(rk), dz_ref(rk), loss_ref(c.rows);
      for (int i = 0; i < c.rows; ++i) {
        const int e = c.entry[i];
        loss_ref[i] = loss_forward_backward_one(c.logits.data() + static_cast<size_t>(i) * K, K,
                                                c.dist.data() + static_cast<size_t>(e) * K,
                                                static_cast<TargetKind>(c.kind[e]), c.cls[e], loss, kappa,
                                                probs_ref.data() + static_cast<size_t>(i) * K,
                                                dz_ref.data() + static_cast<size_t>(i) * K);
      }
      GuardedBuffer<float> logits(c.logits), dist(c.dist), probs(rk), dz(rk), lossd(c.rows);
      GuardedBuffer<int32_t> entry(c.entry), kind(c.kind), cls(c.cls);
      cuda::SoftmaxLossParams p;
      p.logits = logits.get();
      p.rows = c.rows;
      p.K = K;
      p.entry = entry.get();
      p.target_dist = dist.get();
      p.target_kind = kind.get();
      p.target_class = cls.get();
      p.loss = loss;
      p.kappa = kappa;
      p.probs = probs.get();
      p.loss_out = lossd.get();
      p.dlogits = dz.get();
      cuda::softmax_loss_cuda(p, 0);
      // Probabilities and gradients are in [-1, 1]: 1e-6 is ~16 ulps of 1. Both sides compute them in double and
      // round once, so they usually agree exactly.
      EXPECT_TRUE(all_close("probs", probs.download(), probs_ref, {1e-6, 1e-4}));
      EXPECT_TRUE(all_close("dlogits", dz.download(), dz_ref, {1e-6, 1e-4}));
      // Losses reach ~2e4 for the scaled logits, where rtol dominates; 1e-5 covers small losses near 0.
      EXPECT_TRUE(all_close("loss", lossd.download(), loss_ref, {1e-5, 1e-4}));
      EXPECT_TRUE(probs.guard_intact());
      EXPECT_TRUE(dz.guard_intact());
      EXPECT_TRUE(lossd.guard_intact());
    }
}

TEST_F(CudaLossKernels, SoftmaxLossTrainingMode) {
  const int K = 10, n = 300;
  const std::vector<float> logits = normal(static_cast<size_t>(n) * K, 3.0f);
  std::vector<int32_t> labels(n);
  for (int32_t& y : labels) y = randint(0, K - 1);
  std::vector<float> probs_ref(static_cast<size_t>(n) * K), dz_ref(probs_ref.size()), loss_ref(n), onehot(K);
  std::vector<int32_t> correct_ref(n);
  for (int i = 0; i < n; ++i) {
    std::fill(onehot.begin(), onehot.end(), 0.0f);
    onehot[labels[i]] = 1.0f;
    const float* z = logits.data() + static_cast<size_t>(i) * K;
    loss_ref[i] = loss_forward_backward_one(z, K, onehot.data(), TargetKind::OneHot, labels[i],
                                            LossKind::CrossEntropy, 0.0f, probs_ref.data() + static_cast<size_t>(i) * K,
                                            dz_ref.data() + static_cast<size_t>(i) * K);
    for (int j = 0; j < K; ++j) dz_ref[static_cast<size_t>(i) * K + j] /= static_cast<float>(n);
    correct_ref[i] = static_cast<int>(std::max_element(z, z + K) - z) == labels[i];
  }
  GuardedBuffer<float> zd(logits), probs(probs_ref.size()), dz(dz_ref.size()), lossd(n);
  GuardedBuffer<int32_t> cls(labels), correct(n);
  cuda::SoftmaxLossParams p;
  p.logits = zd.get();
  p.rows = n;
  p.K = K;
  p.target_class = cls.get();
  p.dlogits_divisor = static_cast<float>(n);
  p.probs = probs.get();
  p.loss_out = lossd.get();
  p.dlogits = dz.get();
  p.correct = correct.get();
  cuda::softmax_loss_cuda(p, 0);
  EXPECT_TRUE(all_close("probs", probs.download(), probs_ref, {1e-6, 1e-4}));
  EXPECT_TRUE(all_close("dlogits / n", dz.download(), dz_ref, {1e-6 / n, 1e-4}));
  EXPECT_TRUE(all_close("loss", lossd.download(), loss_ref, {1e-5, 1e-4}));
  EXPECT_TRUE(all_equal("correct", correct.download(), correct_ref));
  EXPECT_TRUE(correct.guard_intact());
}

TEST_F(CudaLossKernels, Softmax) {
  const int K = 10, n = 1000;
  const std::vector<float> logits = normal(static_cast<size_t>(n) * K, 5.0f);
  std::vector<float> ref(logits.size()), onehot(K, 0.0f);
  onehot[0] = 1.0f;
  for (int i = 0; i < n; ++i)
    loss_forward_backward_one(logits.data() + static_cast<size_t>(i) * K, K, onehot.data(), TargetKind::OneHot, 0,
                              LossKind::CrossEntropy, 0.0f, ref.data() + static_cast<size_t>(i) * K, nullptr);
  GuardedBuffer<float> zd(logits), probs(ref.size());
  cuda::softmax_cuda(zd.get(), n, K, probs.get(), 0);
  EXPECT_TRUE(all_close("softmax", probs.download(), ref, {1e-7, 1e-4}));
  EXPECT_TRUE(probs.guard_intact());
}

// TRADES' loss: the kernel calls trades_loss_one, the CPU backend's own function, so the two differ only where the
// device's double exp/log round differently from glibc's (each within 1-2 ulps of double).
TEST_F(CudaKernels, TradesLossMatchesCpu) {
  for (int K : {2, 10, 37})
    for (float beta : {0.0f, 6.0f}) {
      SCOPED_TRACE("K=" + std::to_string(K) + " beta=" + std::to_string(beta));
      const int n = 300;  // three blocks of 128, the last one partly idle
      const float scale = 1.0f / n;
      std::vector<float> logits = normal(static_cast<size_t>(2) * n * K, 3.0f);
      for (int r = 0; r < 2 * n; ++r) {
        float* z = logits.data() + static_cast<size_t>(r) * K;
        const int pick = randint(0, 9);
        if (pick == 0)  // logits of +-1e4 (clean and attacked rows independently): log-sum-exp must stay finite
          for (int j = 0; j < K; ++j) z[j] *= 2500.0f;
        if (pick == 1) z[K - 1] = z[0] = std::max(z[0], z[K - 1]) + 1.0f;  // a tied maximum: the first one counts
      }
      std::vector<int32_t> labels(n);
      for (int32_t& y : labels) y = randint(0, K - 1);

      std::vector<float> dz_ref(logits.size()), ce_ref(n), kl_ref(n);
      std::vector<int32_t> clean_ref(n), adv_ref(n);
      // Per-element atol: both sides evaluate the same double expressions, whose results differ by a few ulps of
      // double (2^-52 ~ 2.2e-16) of the magnitudes that enter them (the logits and their log-sum-exps, up to ~1e4
      // here, and KL), tens of operations deep; 1e-13 of those magnitudes is ~10x that, and still ~1e-4 of a float
      // ulp of the gradients. Then each side rounds to float once, so results a rounding boundary apart differ by
      // one float ulp: rtol 2^-23.
      std::vector<double> dz_atol(logits.size()), ce_atol(n), kl_atol(n);
      for (int i = 0; i < n; ++i) {
        const float* z = logits.data() + static_cast<size_t>(i) * K;
        const float* za = logits.data() + static_cast<size_t>(n + i) * K;
        float* dz = dz_ref.data() + static_cast<size_t>(i) * K;
        float* dza = dz_ref.data() + static_cast<size_t>(n + i) * K;
        const TradesTerms t = trades_loss_one(z, za, K, labels[i], beta, scale, dz, dza);
        ce_ref[i] = static_cast<float>(t.ce);
        kl_ref[i] = static_cast<float>(t.kl);
        clean_ref[i] = static_cast<int>(std::max_element(z, z + K) - z) == labels[i];
        adv_ref[i] = static_cast<int>(std::max_element(za, za + K) - za) == labels[i];
        const double lse = log_sum_exp(z, K), lsea = log_sum_exp(za, K);
        double mag = 0;
        for (int j = 0; j < K; ++j) mag = std::max(mag, static_cast<double>(std::fabs(z[j]) + std::fabs(za[j])));
        mag += std::fabs(lse) + std::fabs(lsea) + std::fabs(t.kl) + 1.0;
        for (int j = 0; j < K; ++j) {
          dz_atol[static_cast<size_t>(i) * K + j] = 1e-13 * scale * (1.0 + beta * mag);
          dz_atol[static_cast<size_t>(n + i) * K + j] = 1e-13 * scale * (1.0 + beta);
        }
        ce_atol[i] = 1e-13 * (std::fabs(lse) + std::fabs(z[labels[i]]) + 1.0);
        kl_atol[i] = 1e-13 * mag;
      }

      GuardedBuffer<float> zd(logits), dzd(logits.size()), ced(n), kld(n);
      GuardedBuffer<int32_t> yd(labels), clean(n), adv(n);
      cuda::TradesLossParams p;
      p.logits = zd.get();
      p.labels = yd.get();
      p.n = n;
      p.K = K;
      p.beta = beta;
      p.scale = scale;
      p.dlogits = dzd.get();
      p.ce = ced.get();
      p.kl = kld.get();
      p.clean_correct = clean.get();
      p.adv_correct = adv.get();
      cuda::trades_loss_cuda(p, 0);
      const double rtol = 2.0 * kUlp;
      EXPECT_TRUE(all_close("dlogits", dzd.download(), dz_ref, {0, rtol}, &dz_atol));
      EXPECT_TRUE(all_close("ce", ced.download(), ce_ref, {0, rtol}, &ce_atol));
      EXPECT_TRUE(all_close("kl", kld.download(), kl_ref, {0, rtol}, &kl_atol));
      // Comparisons only, the first maximum as std::max_element (the CPU backend's): exact.
      EXPECT_TRUE(all_equal("clean correct", clean.download(), clean_ref));
      EXPECT_TRUE(all_equal("adv correct", adv.download(), adv_ref));
      EXPECT_TRUE(dzd.guard_intact());
      EXPECT_TRUE(ced.guard_intact());
      EXPECT_TRUE(kld.guard_intact());
      EXPECT_TRUE(clean.guard_intact());
      EXPECT_TRUE(adv.guard_intact());
    }
  cuda::TradesLossParams bad;  // K = 1 has no KL to speak of: the launcher refuses it before touching any buffer
  bad.n = 1;
  bad.K = 1;
  EXPECT_ANY_THROW(cuda::trades_loss_cuda(bad, 0));
}

// ---- optimize bookkeeping ----------------------------------------------------------------------------------------

TEST_F(CudaLossKernels, OptimizeTrack) {
  const int K = 10, D = 37;
  for (int variant = 0; variant < 2; ++variant) {
    StepConfig cfg;
    cfg.stop_prob = variant ? 0.6f : 0.0f;
    cfg.early_stop = variant == 1;
    cfg.stop_kl = 0.05f;
    SCOPED_TRACE("stop_prob " + std::to_string(cfg.stop_prob) + (cfg.early_stop ? ", early stop" : ""));
    LossCase c = make_case(K);
    const int rows = 200, E = c.entries;
    c.entry.resize(rows);
    std::vector<float> probs(static_cast<size_t>(rows) * K), loss = uniform(rows, 0.0f, 3.0f);
    for (int i = 0; i < rows; ++i) {
      const int e = c.entry[i];
      std::vector<float> z = normal(K, 2.0f);
      if (randint(0, 2) == 0) z[c.cls[e]] += 8.0f;  // goals met often: OneHot yes, Untargeted no
      if (randint(0, 3) == 0) z[c.cls[e]] -= 8.0f;  // ... and the other way round
      loss_forward_backward_one(z.data(), K, c.dist.data() + static_cast<size_t>(e) * K, TargetKind::OneHot, 0,
                                LossKind::CrossEntropy, 0.0f, probs.data() + static_cast<size_t>(i) * K, nullptr);
      if (c.kind[e] == static_cast<int>(TargetKind::Soft) && randint(0, 1) == 0)  // KL(t || p) = 0: met
        std::copy_n(probs.data() + static_cast<size_t>(i) * K, K, c.dist.data() + static_cast<size_t>(e) * K);
    }
    const std::vector<float> x = uniform(static_cast<size_t>(E) * D, 0.0f, 1.0f);
    std::vector<float> best_loss = uniform(E, 0.0f, 3.0f), best_probs = uniform(static_cast<size_t>(E) * K, 0, 1),
                       best_images = uniform(static_cast<size_t>(E) * D, 0, 1);
    std::vector<int32_t> steps(E), success(E, -1);
    std::vector<uint8_t> reached(E, 0);
    for (int e = 0; e < E; ++e) {
      steps[e] = randint(0, 50);
      if (randint(0, 4) == 0) best_loss[e] = INFINITY;
      if (randint(0, 4) == 0) {
        reached[e] = 1;
        success[e] = randint(0, steps[e]);
      }
    }
    GuardedBuffer<float> probs_d(probs), loss_d(loss), x_d(x), dist_d(c.dist), bl_d(best_loss), bp_d(best_probs),
        bi_d(best_images);
    GuardedBuffer<int32_t> entry_d(c.entry), kind_d(c.kind), cls_d(c.cls), steps_d(steps), success_d(success);
    GuardedBuffer<uint8_t> reached_d(reached), keep_d(rows);

    std::vector<uint8_t> keep_ref(rows);
    for (int i = 0; i < rows; ++i) {  // the twin: CpuOptimizeChunk::evaluate_and_update's bookkeeping
      const int e = c.entry[i];
      const float* pi = probs.data() + static_cast<size_t>(i) * K;
      const bool met = goal_met(pi, K, c.dist.data() + static_cast<size_t>(e) * K,
                                static_cast<TargetKind>(c.kind[e]), c.cls[e], cfg);
      if (!reached[e] && (met || loss[i] < best_loss[e])) {
        best_loss[e] = loss[i];
        std::copy_n(x.data() + static_cast<size_t>(e) * D, D, best_images.data() + static_cast<size_t>(e) * D);
        std::copy_n(pi, K, best_probs.data() + static_cast<size_t>(e) * K);
        if (met) {
          reached[e] = 1;
          success[e] = steps[e];
        }
      }
      keep_ref[i] = !(met && cfg.early_stop);
    }
    cuda::TrackParams p;
    p.rows = rows;
    p.K = K;
    p.D = D;
    p.entry = entry_d.get();
    p.probs = probs_d.get();
    p.loss = loss_d.get();
    p.x = x_d.get();
    p.target_dist = dist_d.get();
    p.target_kind = kind_d.get();
    p.target_class = cls_d.get();
    p.steps_done = steps_d.get();
    p.stop_prob = cfg.stop_prob;
    p.stop_kl = cfg.stop_kl;
    p.early_stop = cfg.early_stop;
    p.goal_reached = reached_d.get();
    p.best_loss = bl_d.get();
    p.best_probs = bp_d.get();
    p.best_images = bi_d.get();
    p.success_step = success_d.get();
    p.keep = keep_d.get();
    cuda::optimize_track_cuda(p, 0);
    // Exact: the kernel compares and copies the values it is given; its one computed quantity, the soft goal's
    // KL, is a double sum of double logs (CUDA's log is within 1 ulp, glibc's within 1 ulp) rounded to float and
    // then compared, so a flip needs the double sum within a few double ulps (~1e-16 relative) of a float rounding
    // point or of stop_kl: odds ~2^-28 per row, not rounding that a bound could describe.
    EXPECT_TRUE(all_equal("keep", keep_d.download(), keep_ref));
    EXPECT_TRUE(all_equal("goal_reached", reached_d.download(), reached));
    EXPECT_TRUE(all_equal("success_step", success_d.download(), success));
    EXPECT_TRUE(all_equal("best_loss", bl_d.download(), best_loss));
    EXPECT_TRUE(all_equal("best_probs", bp_d.download(), best_probs));
    EXPECT_TRUE(all_equal("best_images", bi_d.download(), best_images));
    for (auto* g : {&bl_d, &bp_d, &bi_d}) EXPECT_TRUE(g->guard_intact());
    EXPECT_TRUE(keep_d.guard_intact());
    EXPECT_TRUE(reached_d.guard_intact());
    EXPECT_TRUE(success_d.guard_intact());
    int met_count = 0;
    for (uint8_t k : keep_ref) met_count += !k;
    if (cfg.early_stop) {
      EXPECT_GT(met_count, 0) << "the case should stop some entries";
    }
  }
}

// ---- the input optimizer step ------------------------------------------------------------------------------------

TEST_F(CudaKernels, InputStep) {
  const int E = 40, rows = 30, D = 300;  // D > 256 threads, not a multiple: loop tails
  for (InputOptimizer opt : {InputOptimizer::Adam, InputOptimizer::Sgd, InputOptimizer::Sign})
    for (Norm norm : {Norm::None, Norm::Linf, Norm::L2}) {
      SCOPED_TRACE(std::string(to_string(opt)) + " / " + to_string(norm));
      StepConfig cfg;
      cfg.optimizer = opt;
      cfg.norm = norm;
      cfg.lr = opt == InputOptimizer::Adam ? 0.05f : opt == InputOptimizer::Sgd ? 0.1f : 0.02f;
      const std::vector<int32_t> entry = sample(rows, E);
      std::vector<uint8_t> keep(rows);
      for (uint8_t& k : keep) k = randint(0, 4) != 0;
      const size_t ed = static_cast<size_t>(E) * D;
      std::vector<float> x = uniform(ed, 0, 1), x0 = uniform(ed, 0, 1), m = normal(ed, 0.1f), v = uniform(ed, 0, 0.05f);
      const std::vector<float> grad = normal(static_cast<size_t>(rows) * D);
      std::vector<float> eps = norm == Norm::L2 ? uniform(E, 0.5f, 4.0f) : uniform(E, 0.01f, 0.3f);
      std::vector<int32_t> steps(E);
      for (int32_t& s : steps) s = randint(0, 20);

      GuardedBuffer<float> x_d(x), x0_d(x0), m_d(m), v_d(v), g_d(grad), eps_d(eps);
      GuardedBuffer<int32_t> entry_d(entry), steps_d(steps);
      GuardedBuffer<uint8_t> keep_d(keep);
      for (int i = 0; i < rows; ++i) {
        if (!keep[i]) continue;
        const size_t o = static_cast<size_t>(entry[i]) * D;
        ++steps[entry[i]];
        input_update_one(x.data() + o, grad.data() + static_cast<size_t>(i) * D, m.data() + o, v.data() + o,
                         steps[entry[i]], x0.data() + o, D, eps[entry[i]], cfg);
      }
      cuda::InputStepParams p;
      p.rows = rows;
      p.D = D;
      p.entry = entry_d.get();
      p.keep = keep_d.get();
      p.grad = g_d.get();
      p.x = x_d.get();
      p.x0 = x0_d.get();
      p.m = m_d.get();
      p.v = v_d.get();
      p.steps_done = steps_d.get();
      p.eps = eps_d.get();
      p.optimizer = opt;
      p.norm = norm;
      p.lr = cfg.lr;
      p.beta1 = cfg.beta1;
      p.beta2 = cfg.beta2;
      p.adam_eps = cfg.adam_eps;
      cuda::input_step_cuda(p, 0);
      // Pixels are in [0, 1]; the GPU's FMAs and powf move an Adam step (~lr) by a few ulps of itself: 1e-6 is
      // ~8 ulps of 1. Moments are a few ulps apart at most.
      EXPECT_TRUE(all_close("x", x_d.download(), x, {1e-6, 1e-4}));
      if (opt == InputOptimizer::Adam) {
        EXPECT_TRUE(all_close("m", m_d.download(), m, {1e-8, 1e-4}));
        EXPECT_TRUE(all_close("v", v_d.download(), v, {1e-10, 1e-4}));
      }
      EXPECT_TRUE(all_equal("steps_done", steps_d.download(), steps));
      EXPECT_TRUE(x_d.guard_intact());
      EXPECT_TRUE(m_d.guard_intact());
      EXPECT_TRUE(v_d.guard_intact());
      EXPECT_TRUE(steps_d.guard_intact());
    }
}

// ---- noise, Adam, gather, compaction ---------------------------------------------------------------------------

TEST_F(CudaKernels, NoiseBitIdentical) {
  const int n = randint(1, 40), D = 785;  // D not a multiple of 4: the last Philox block is partial
  const uint64_t seed = rng_(), first = (uint64_t{1} << 33) + randint(0, 1000);  // high index bits in play
  std::vector<float> ref(static_cast<size_t>(n) * D);
  for (int i = 0; i < n; ++i)
    for (int p = 0; p < D; ++p)
      ref[static_cast<size_t>(i) * D + p] = counter_uniform(seed, kStreamNoise, first + i, static_cast<uint32_t>(p));
  GuardedBuffer<float> out(ref.size());
  cuda::noise_images_cuda(out.get(), n, D, seed, first, 0);
  // Exact: integer Philox from the same header (host/core/counter_rng.h) and a float formed from 24 bits.
  EXPECT_TRUE(all_equal("noise", out.download(), ref));
  EXPECT_TRUE(out.guard_intact());

  // The start-image source's own twin, for small indices.
  std::vector<float> img(D);
  noise_image(seed, 7, D, img.data());
  out.poison();
  cuda::noise_images_cuda(out.get(), 1, D, seed, 7, 0);
  std::vector<float> got = out.download();
  got.resize(D);
  EXPECT_TRUE(all_equal("noise_image(7)", got, img));
}

// An optimize chunk's start images made on the device (ChunkState, GeneratedStarts) against StartImages::fill on
// the host, through the entry -> image mapping: rows of 3 entries, 4 rows per image, from row 5 on.
TEST_F(CudaKernels, EntryStartImagesBitIdentical) {
  const int D = 787, n = 50;  // D not a multiple of 4: the last Philox block's tail
  for (bool gray : {false, true}) {
    SCOPED_TRACE(gray ? "gray" : "noise");
    cuda::EntryStarts st;
    st.gray = gray;
    st.gray_value = 0.37f;
    st.seed = 0x1234567890ull + randint(0, 1000);
    st.first_row = 5;
    st.entries_per_row = 3;
    st.rows_per_source = 4;
    std::vector<float> ref(static_cast<size_t>(n) * D);
    for (int i = 0; i < n; ++i) {
      const long image = (st.first_row + i / st.entries_per_row) / st.rows_per_source;
      float* row = ref.data() + static_cast<size_t>(i) * D;
      if (gray) std::fill(row, row + D, st.gray_value);
      else noise_image(st.seed, image, D, row);
    }
    GuardedBuffer<float> out(ref.size());
    cuda::entry_start_images_cuda(out.get(), n, D, st, 0);
    // Exact: the same integer generator and 24-bit floats, or a copy of one value.
    EXPECT_TRUE(all_equal("start images", out.download(), ref));
    EXPECT_TRUE(out.guard_intact());
  }
}

TEST_F(CudaKernels, RowArgmax) {
  const int rows = 300, K = 10;
  std::vector<float> probs = uniform(static_cast<size_t>(rows) * K, 0.0f, 1.0f);
  // Ties: rows 0..9 have their maximum twice (the first one must win), row 10 is constant.
  for (int r = 0; r < 10; ++r) probs[r * K + r] = probs[r * K + (r + 3) % K] = 2.0f;
  for (int k = 0; k < K; ++k) probs[10 * K + k] = 0.5f;
  const std::vector<int32_t> entry = sample(rows, rows + 50);
  std::vector<int32_t> ref(rows + 50, -7);
  for (int r = 0; r < rows; ++r) {
    const float* q = probs.data() + static_cast<size_t>(r) * K;
    ref[entry[r]] = static_cast<int32_t>(std::max_element(q, q + K) - q);
  }
  GuardedBuffer<float> p_d(probs);
  GuardedBuffer<int32_t> e_d(entry), out(std::vector<int32_t>(rows + 50, -7));
  cuda::row_argmax_cuda(p_d.get(), rows, K, e_d.get(), out.get(), 0);
  // Exact: comparisons only, the first maximum as std::max_element; untouched slots stay as they were.
  EXPECT_TRUE(all_equal("argmax", out.download(), ref));
  EXPECT_TRUE(out.guard_intact());
}

TEST_F(CudaKernels, AdamUpdate) {
  const size_t n = 10007;
  std::vector<float> w = normal(n), g = normal(n, 0.1f), m = normal(n, 0.01f), v = uniform(n, 0, 0.01f);
  AdamConfig adam;
  const int t = 3;
  cuda::AdamStep s;
  s.lr = adam.lr;
  s.beta1 = adam.beta1;
  s.beta2 = adam.beta2;
  s.eps = adam.eps;
  s.c1 = 1.0f - std::pow(adam.beta1, static_cast<float>(t));
  s.c2 = 1.0f - std::pow(adam.beta2, static_cast<float>(t));
  GuardedBuffer<float> w_d(w), g_d(g), m_d(m), v_d(v);
  for (size_t i = 0; i < n; ++i) {  // the twin: CpuBackend::train_step's update loop
    m[i] = adam.beta1 * m[i] + (1 - adam.beta1) * g[i];
    v[i] = adam.beta2 * v[i] + (1 - adam.beta2) * g[i] * g[i];
    w[i] -= adam.lr * (m[i] / s.c1) / (std::sqrt(v[i] / s.c2) + adam.eps);
  }
  cuda::adam_update_cuda(w_d.get(), g_d.get(), m_d.get(), v_d.get(), n, s, 0);
  // |w| ~ 1 and each step moves it by ~lr; FMA contraction changes the step by an ulp or two: 1e-7 ~ 1 ulp of 1.
  EXPECT_TRUE(all_close("w", w_d.download(), w, {2e-7, 1e-4}));
  EXPECT_TRUE(all_close("m", m_d.download(), m, {1e-9, 1e-4}));
  EXPECT_TRUE(all_close("v", v_d.download(), v, {1e-11, 1e-4}));
  EXPECT_TRUE(w_d.guard_intact());
}

TEST_F(CudaKernels, GatherRows) {
  const int E = 100, count = 77, D = 129;
  const std::vector<float> src = normal(static_cast<size_t>(E) * D);
  std::vector<int32_t> rows(count);
  for (int32_t& r : rows) r = randint(0, E - 1);
  std::vector<float> ref(static_cast<size_t>(count) * D);
  for (int i = 0; i < count; ++i)
    std::copy_n(src.data() + static_cast<size_t>(rows[i]) * D, D, ref.data() + static_cast<size_t>(i) * D);
  GuardedBuffer<float> src_d(src), dst(ref.size());
  GuardedBuffer<int32_t> rows_d(rows);
  cuda::gather_rows_cuda(src_d.get(), rows_d.get(), count, D, dst.get(), 0);
  // Exact: copies.
  EXPECT_TRUE(all_equal("gather", dst.download(), ref));
  EXPECT_TRUE(dst.guard_intact());
}

TEST_F(CudaKernels, CompactActive) {
  for (int count : {0, 1, 31, 1023, 1024, 1025, 4099})
    for (int keep_pct : {0, 50, 100}) {
      SCOPED_TRACE("count " + std::to_string(count) + ", keep " + std::to_string(keep_pct) + "%");
      const std::vector<int32_t> active = sample(count, 2 * count + 1);
      std::vector<uint8_t> keep(count);
      for (uint8_t& k : keep) k = randint(0, 99) < keep_pct;
      std::vector<int32_t> ref;
      for (int i = 0; i < count; ++i)
        if (keep[i]) ref.push_back(active[i]);
      GuardedBuffer<int32_t> active_d(active), out(count), count_d(1);
      GuardedBuffer<uint8_t> keep_d(keep);
      cuda::compact_active_cuda(active_d.get(), keep_d.get(), count, out.get(), count_d.get(), 0);
      const int got_count = count_d.download()[0];
      ASSERT_EQ(got_count, static_cast<int>(ref.size()));
      std::vector<int32_t> got = out.download();
      got.resize(got_count);
      // Exact: integer compaction.
      EXPECT_TRUE(all_equal("compacted", got, ref));
      EXPECT_TRUE(out.guard_intact());
    }
}

// ---- cuDNN and cuBLAS wrappers -----------------------------------------------------------------------------------

class CudaLibraries : public CudaKernels {
 protected:
  void SetUp() override {
    CudaKernels::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ctx_ = std::make_unique<cuda::CudaContext>(0);
    if (ctx_->allow_tf32()) NUDGE_GPU_SKIP("NUDGE_ALLOW_TF32 is set: FP32 parity does not apply");
  }
  std::unique_ptr<cuda::CudaContext> ctx_;
};

TEST_F(CudaLibraries, ConvMatchesCpu) {
  const int K = randint(1, 8);
  const Shape3 in{randint(1, 4), randint(5, 12), randint(5, 12)};
  const int k = randint(1, std::min({in.h, in.w, 5}));
  const int Ho = in.h - k + 1, Wo = in.w - k + 1;
  const std::vector<float> w = normal(static_cast<size_t>(K) * in.c * k * k);
  const std::vector<float> zeros(K, 0.0f);
  cuda::ConvOp op(*ctx_, in, K, k);
  GuardedBuffer<float> w_d(w);
  // 3 then 5 images: the second call uses the algorithm of another batch bucket; then 3 again, from the cache.
  for (int N : {3, 5, 3}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " in " + std::to_string(in.c) + "x" + std::to_string(in.h) + "x" +
                 std::to_string(in.w) + " K=" + std::to_string(K) + " k=" + std::to_string(k));
    const size_t xn = static_cast<size_t>(N) * in.size(), yn = static_cast<size_t>(N) * K * Ho * Wo;
    const std::vector<float> x = normal(xn), dy = normal(yn);
    std::vector<float> y(yn), y_abs(yn), dx(xn), dx_abs(xn), dw(w.size()), dw_abs(w.size()), db(K);
    cpu::conv2d_forward(x.data(), N, in, w.data(), zeros.data(), K, k, y.data());
    cpu::conv2d_forward(abs_of(x).data(), N, in, abs_of(w).data(), zeros.data(), K, k, y_abs.data());
    cpu::conv2d_backward_data(dy.data(), N, in, w.data(), K, k, dx.data());
    cpu::conv2d_backward_data(abs_of(dy).data(), N, in, abs_of(w).data(), K, k, dx_abs.data());
    cpu::conv2d_backward_filter(x.data(), dy.data(), N, in, K, k, dw.data(), db.data());
    cpu::conv2d_backward_filter(abs_of(x).data(), abs_of(dy).data(), N, in, K, k, dw_abs.data(), db.data());

    GuardedBuffer<float> x_d(x), dy_d(dy), y_d(yn), dx_d(xn), dw_d(w.size());
    op.forward(x_d.get(), w_d.get(), y_d.get(), N);
    op.backward_data(dy_d.get(), w_d.get(), dx_d.get(), N);
    op.backward_filter(x_d.get(), dy_d.get(), dw_d.get(), N);
    const std::vector<double> y_tol = sum_bound(y_abs, in.c * k * k), dx_tol = sum_bound(dx_abs, K * k * k),
                              dw_tol = sum_bound(dw_abs, N * Ho * Wo);
    EXPECT_TRUE(all_close("conv forward", y_d.download(), y, {0, 1e-4}, &y_tol));
    EXPECT_TRUE(all_close("conv backward data", dx_d.download(), dx, {0, 1e-4}, &dx_tol));
    EXPECT_TRUE(all_close("conv backward filter", dw_d.download(), dw, {0, 1e-4}, &dw_tol));
    EXPECT_TRUE(y_d.guard_intact());
    EXPECT_TRUE(dx_d.guard_intact());
    EXPECT_TRUE(dw_d.guard_intact());
  }
}

TEST_F(CudaLibraries, DenseMatchesCpu) {
  const int N = randint(1, 40), in = randint(1, 600), out = randint(1, 70);
  SCOPED_TRACE("N=" + std::to_string(N) + " in=" + std::to_string(in) + " out=" + std::to_string(out));
  const std::vector<float> x = normal(static_cast<size_t>(N) * in), w = normal(static_cast<size_t>(out) * in),
                           dy = normal(static_cast<size_t>(N) * out), zeros(out, 0.0f);
  std::vector<float> y(dy.size()), y_abs(dy.size()), dx(x.size()), dx_abs(x.size()), dw(w.size()), dw_abs(w.size()),
      db(out);
  cpu::dense_forward(x.data(), N, in, w.data(), zeros.data(), out, y.data());
  cpu::dense_forward(abs_of(x).data(), N, in, abs_of(w).data(), zeros.data(), out, y_abs.data());
  cpu::dense_backward_data(dy.data(), N, in, w.data(), out, dx.data());
  cpu::dense_backward_data(abs_of(dy).data(), N, in, abs_of(w).data(), out, dx_abs.data());
  cpu::dense_backward_params(x.data(), dy.data(), N, in, out, dw.data(), db.data());
  cpu::dense_backward_params(abs_of(x).data(), abs_of(dy).data(), N, in, out, dw_abs.data(), db.data());
  GuardedBuffer<float> x_d(x), w_d(w), dy_d(dy), y_d(y.size()), dx_d(x.size()), dw_d(w.size());
  cuda::dense_forward_gemm(*ctx_, x_d.get(), N, in, w_d.get(), out, y_d.get());
  cuda::dense_backward_data_gemm(*ctx_, dy_d.get(), N, in, w_d.get(), out, dx_d.get());
  cuda::dense_backward_weight_gemm(*ctx_, x_d.get(), dy_d.get(), N, in, out, dw_d.get());
  const std::vector<double> y_tol = sum_bound(y_abs, in), dx_tol = sum_bound(dx_abs, out), dw_tol = sum_bound(dw_abs, N);
  EXPECT_TRUE(all_close("dense forward", y_d.download(), y, {0, 1e-4}, &y_tol));
  EXPECT_TRUE(all_close("dense backward data", dx_d.download(), dx, {0, 1e-4}, &dx_tol));
  EXPECT_TRUE(all_close("dense backward weight", dw_d.download(), dw, {0, 1e-4}, &dw_tol));
  EXPECT_TRUE(y_d.guard_intact());
  EXPECT_TRUE(dx_d.guard_intact());
  EXPECT_TRUE(dw_d.guard_intact());
}

// ---- staged uploads (host/cuda/staged_upload.h) ----------------------------------------------------------------------

TEST_F(CudaLibraries, StagedUploaderDeliversEveryByteInStreamOrder) {
  // Slots of 1000 bytes: most copies span several slots, and both slots are reused many times over.
  cuda::StagedUploader up(ctx_->copy_stream(), 1000);
  constexpr int kCopies = 40;
  std::vector<std::unique_ptr<GuardedBuffer<float>>> dst;
  std::vector<std::vector<float>> expected;
  for (int c = 0; c < kCopies; ++c) {
    const size_t count = c == 0 ? 0 : static_cast<size_t>(randint(1, 1500));
    expected.push_back(uniform(count, -1.0f, 1.0f));
    dst.push_back(std::make_unique<GuardedBuffer<float>>(count));
    std::vector<float> src = expected.back();
    up.copy(dst.back()->get(), src.data(), count * sizeof(float));
    // copy() promises that the source may be reused once it returns.
    std::fill(src.begin(), src.end(), std::nanf(""));
  }
  // A later copy to the same place lands after the earlier one.
  std::vector<float> again = uniform(expected[1].size(), 2.0f, 3.0f);
  up.copy(dst[1]->get(), again.data(), again.size() * sizeof(float));
  expected[1] = again;
  ASSERT_EQ(cudaStreamSynchronize(ctx_->copy_stream()), cudaSuccess);
  for (int c = 0; c < kCopies; ++c) {
    SCOPED_TRACE("copy " + std::to_string(c) + " of " + std::to_string(expected[c].size()) + " floats");
    EXPECT_TRUE(all_equal("uploaded", dst[c]->download(), expected[c]));
    EXPECT_TRUE(dst[c]->guard_intact());
  }
}

#else  // !NUDGE_HAVE_CUDA

TEST(CudaKernels, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
