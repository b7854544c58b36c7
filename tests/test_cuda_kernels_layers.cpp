// The network's layer kernels and their library wrappers against their CPU twins (host/cpu/cpu_layers.h): bias add
// and ReLU (forward, in place, backward), the bias gradient, max-pooling forward and backward (overlapping, padded
// and odd-sized windows, deliberate ties), average pooling forward and backward, the pool launchers' shape checks
// (these run without a GPU), Adam's parameter update, cuDNN convolution with padding and stride and cuBLAS dense
// layers (forward, backward data, backward filter/weights), and the staged uploader on the copy stream. Fresh seeded random inputs (NUDGE_TEST_SEED=<seed>
// replays a run); outputs are poisoned with NaN before each launch and guarded by a sentinel region, so an unwritten
// element or a stray write fails.
//
// Tolerances: |gpu - ref| <= atol + rtol |ref| with rtol 1e-4 for FP32 arithmetic. Kernels that do the same float
// operations as their twin (bias, ReLU, pooling, copies) must match bit for bit. Sums get a per-element atol from the
// worst-case FP32 summation bound, m u sum|terms| (m terms, u = 2^-24), computed by running the CPU twin on absolute
// values (sum_bound); where the GPU contracts to FMAs the atol is a few ulps of the values' scale, stated at each use.
// These are bounds from the arithmetic, not yet from measurement on a GPU: the first GPU run prints the measured
// maxima on any failure, and bounds should then be tightened.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "cpu_layers.h"
#include "cuda_kernel_fixtures.h"
#include "cuda_test_util.h"
#include "errors.h"

#if NUDGE_HAVE_CUDA
#include "adam.cuh"
#include "avgpool.cuh"
#include "bias_grad.cuh"
#include "bias_relu.cuh"
#include "cublas_dense.h"
#include "cuda_context.h"
#include "cudnn_conv.h"
#include "maxpool.cuh"
#include "staged_upload.h"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::CudaKernels;
using test::GuardedBuffer;
using test::kUlp;
using test::Tolerance;

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

// ---- max- and average pooling --------------------------------------------------------------------------------------

std::string window_text(Window w) {
  return "k=" + std::to_string(w.k) + " s=" + std::to_string(w.stride) + " p=" + std::to_string(w.pad);
}

// The max-pool windows: the reference model's disjoint 2x2, disjoint 3x3, overlapping and padded (3s2p1, the ResNet
// stem's), padded disjoint (2p1: corner windows of one real pixel), stride 1 (2s1, 3s1p1: each input in up to k*k
// windows), padding k/2 of an even window (4s2p2), a stride past the window (2s3: rows and columns no window
// reaches) and the trivial 1x1.
const Window kMaxPoolWindows[] = {{2, 2, 0}, {3, 3, 0}, {3, 2, 1}, {2, 2, 1}, {2, 1, 0},
                                  {3, 1, 1}, {4, 2, 2}, {2, 3, 0}, {1, 1, 0}};

TEST_F(CudaKernels, MaxPoolForwardBackward) {
  for (const Window win : kMaxPoolWindows)
    for (int data = 0; data < 3; ++data) {
      // Inputs of at least k - 2p, up to 17; odd sizes forced on the plain random data (the floor drops edges).
      const int lo = std::max(1, win.k - 2 * win.pad);
      int H = randint(lo, 17), W = randint(lo, 17);
      if (data == 0) {
        H |= 1;
        W |= 1;
      }
      const int N = randint(1, 4), C = randint(1, 6);
      const char* what[] = {"normal", "small integers: many ties", "all negative: padding must never win"};
      SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " H=" + std::to_string(H) + " W=" +
                   std::to_string(W) + " " + window_text(win) + " (" + what[data] + ")");
      const Shape3 in{C, H, W};
      const int Ho = win.out(H), Wo = win.out(W);
      const size_t in_n = static_cast<size_t>(N) * C * H * W, out_n = static_cast<size_t>(N) * C * Ho * Wo;
      std::vector<float> x = normal(in_n);
      if (data == 1)
        for (float& v : x) v = static_cast<float>(randint(0, 2));
      if (data == 2)
        for (float& v : x) v = -1.0f - std::fabs(v);
      std::vector<float> y_ref(out_n), dx_ref(in_n);
      std::vector<int32_t> a_ref(out_n);
      cpu::maxpool_forward(x.data(), N, in, win, y_ref.data(), a_ref.data());
      const std::vector<float> dy = normal(out_n);
      cpu::maxpool_backward(dy.data(), a_ref.data(), N, in, win, dx_ref.data());

      GuardedBuffer<float> xd(x), yd(out_n), dyd(dy), dxd(in_n);
      GuardedBuffer<int32_t> ad(out_n);
      cuda::maxpool_forward_cuda(xd.get(), N, C, H, W, win, yd.get(), ad.get(), 0);
      // Exact: comparisons and copies only, by the same function (maxpool_window_argmax), ties to the first index.
      const std::vector<float> y = yd.download();
      EXPECT_TRUE(all_equal("maxpool y", y, y_ref));
      EXPECT_TRUE(all_equal("maxpool argmax", ad.download(), a_ref));
      if (data == 2) {  // padding taken for a 0 would show as a 0 here
        EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v <= -1.0f; }));
      }
      // Exact: the same adds in the same order (maxpool_input_grad); for stride >= k the CPU's scatter into zeros
      // adds the same single term.
      cuda::maxpool_backward_cuda(dyd.get(), ad.get(), N, C, H, W, win, dxd.get(), 0);
      EXPECT_TRUE(all_equal("maxpool dx", dxd.download(), dx_ref));
      EXPECT_TRUE(yd.guard_intact());
      EXPECT_TRUE(ad.guard_intact());
      EXPECT_TRUE(dxd.guard_intact());
    }
}

// The average-pool windows: disjoint 2x2 and 3x3, overlapping 3s2 and stride 1 (2s1, 3s1), a stride past the window
// (2s3) and 1x1.
const Window kAvgPoolWindows[] = {{2, 2, 0}, {3, 3, 0}, {3, 2, 0}, {2, 1, 0}, {3, 1, 0}, {2, 3, 0}, {1, 1, 0}};

TEST_F(CudaKernels, AvgPoolForwardBackward) {
  for (const Window win : kAvgPoolWindows)
    for (int odd = 0; odd < 2; ++odd) {
      int H = randint(win.k, 17), W = randint(win.k, 17);
      if (odd) {
        H |= 1;
        W |= 1;
      }
      const int N = randint(1, 4), C = randint(1, 6);
      SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " H=" + std::to_string(H) + " W=" +
                   std::to_string(W) + " " + window_text(win));
      const Shape3 in{C, H, W};
      const int Ho = win.out(H), Wo = win.out(W);
      const size_t in_n = static_cast<size_t>(N) * C * H * W, out_n = static_cast<size_t>(N) * C * Ho * Wo;
      const std::vector<float> x = normal(in_n), dy = normal(out_n);
      std::vector<float> y_ref(out_n), dx_ref(in_n);
      cpu::avgpool_forward(x.data(), N, in, win, y_ref.data());
      cpu::avgpool_backward(dy.data(), N, in, win, dx_ref.data());

      GuardedBuffer<float> xd(x), yd(out_n), dyd(dy), dxd(in_n);
      cuda::avgpool_forward_cuda(xd.get(), N, C, H, W, win, yd.get(), 0);
      cuda::avgpool_backward_cuda(dyd.get(), N, C, H, W, win, dxd.get(), 0);
      // Exact: the same float adds in the same order and IEEE divisions by k*k (avgpool_window_mean and
      // avgpool_input_grad, host/core/pool_math.h; no multiply for nvcc to contract, -prec-div is on by default).
      EXPECT_TRUE(all_equal("avgpool y", yd.download(), y_ref));
      EXPECT_TRUE(all_equal("avgpool dx", dxd.download(), dx_ref));
      EXPECT_TRUE(yd.guard_intact());
      EXPECT_TRUE(dxd.guard_intact());
    }
}

// The launchers' shape checks come before any CUDA call, so this runs on machines without a GPU too.
TEST(CudaKernelShapes, PoolLaunchersRefuseImpossibleWindows) {
  float* none = nullptr;
  int32_t* no_index = nullptr;
  // Average pooling has no padding.
  EXPECT_THROW(cuda::avgpool_forward_cuda(none, 1, 1, 4, 4, Window{2, 2, 1}, none, 0), InternalError);
  EXPECT_THROW(cuda::avgpool_backward_cuda(none, 1, 1, 4, 4, Window{2, 2, 1}, none, 0), InternalError);
  // A window larger than the map, a zero stride.
  EXPECT_THROW(cuda::avgpool_forward_cuda(none, 1, 1, 2, 5, Window{3, 1, 0}, none, 0), InternalError);
  EXPECT_THROW(cuda::avgpool_forward_cuda(none, 1, 1, 5, 5, Window{3, 0, 0}, none, 0), InternalError);
  // Padding past half the window (a window of padding only), a map smaller than k - 2p.
  EXPECT_THROW(cuda::maxpool_forward_cuda(none, 1, 1, 5, 5, Window{2, 2, 2}, none, no_index, 0), InternalError);
  EXPECT_THROW(cuda::maxpool_backward_cuda(none, no_index, 1, 1, 5, 5, Window{2, 2, 2}, none, 0), InternalError);
  EXPECT_THROW(cuda::maxpool_forward_cuda(none, 1, 1, 1, 5, Window{4, 2, 1}, none, no_index, 0), InternalError);
  // An empty batch launches nothing.
  EXPECT_NO_THROW(cuda::maxpool_forward_cuda(none, 0, 1, 5, 5, Window{3, 2, 1}, none, no_index, 0));
  EXPECT_NO_THROW(cuda::avgpool_backward_cuda(none, 0, 1, 5, 5, Window{3, 2, 0}, none, 0));
}

// ---- Adam --------------------------------------------------------------------------------------------------------

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

// The convolution windows: one valid stride-1 window of random size (the reference model's kind), padding 1 ("same"
// for k3), stride 2, both (k4s2p1, the DCGAN downsampler), a stride past the window (k1s2: inputs no window reads,
// whose dx must be 0), padding as large as the window (k2p2: outputs that see only padding) and one random window.
std::vector<Window> conv_windows(int random_k, Window random_window) {
  return {{random_k, 1, 0}, {3, 1, 1}, {3, 2, 0}, {4, 2, 1}, {1, 2, 0}, {2, 1, 2}, random_window};
}

TEST_F(CudaLibraries, ConvMatchesCpu) {
  const int random_k = randint(1, 5), rk = randint(1, 5);
  for (const Window win : conv_windows(random_k, {rk, randint(1, 3), randint(0, rk - 1)})) {
    const int K = randint(1, 8);
    const Shape3 in{randint(1, 4), randint(std::max(1, win.k - 2 * win.pad), 12),
                    randint(std::max(1, win.k - 2 * win.pad), 12)};
    const int Ho = win.out(in.h), Wo = win.out(in.w);
    const std::vector<float> w = normal(static_cast<size_t>(K) * in.c * win.k * win.k);
    const std::vector<float> zeros(K, 0.0f);
    cuda::ConvOp op(*ctx_, in, K, win);
    GuardedBuffer<float> w_d(w);
    // 3 then 5 images: the second call uses the algorithm of another batch bucket; then 3 again, from the cache.
    for (int N : {3, 5, 3}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " in " + std::to_string(in.c) + "x" + std::to_string(in.h) + "x" +
                   std::to_string(in.w) + " K=" + std::to_string(K) + " " + window_text(win));
      const size_t xn = static_cast<size_t>(N) * in.size(), yn = static_cast<size_t>(N) * K * Ho * Wo;
      const std::vector<float> x = normal(xn), dy = normal(yn);
      std::vector<float> y(yn), y_abs(yn), dx(xn), dx_abs(xn), dw(w.size()), dw_abs(w.size()), db(K);
      cpu::conv2d_forward(x.data(), N, in, w.data(), zeros.data(), K, win, y.data());
      cpu::conv2d_forward(abs_of(x).data(), N, in, abs_of(w).data(), zeros.data(), K, win, y_abs.data());
      cpu::conv2d_backward_data(dy.data(), N, in, w.data(), K, win, dx.data());
      cpu::conv2d_backward_data(abs_of(dy).data(), N, in, abs_of(w).data(), K, win, dx_abs.data());
      cpu::conv2d_backward_filter(x.data(), dy.data(), N, in, K, win, dw.data(), db.data());
      cpu::conv2d_backward_filter(abs_of(x).data(), abs_of(dy).data(), N, in, K, win, dw_abs.data(), db.data());

      GuardedBuffer<float> x_d(x), dy_d(dy), y_d(yn), dx_d(xn), dw_d(w.size());
      op.forward(x_d.get(), w_d.get(), y_d.get(), N);
      op.backward_data(dy_d.get(), w_d.get(), dx_d.get(), N);
      op.backward_filter(x_d.get(), dy_d.get(), dw_d.get(), N);
      // Term counts are the stride-1, pad-0 ones, upper bounds for the others (padding adds zeros, a stride
      // removes terms from dx); the padded terms are 0 in the absolute sums too.
      const std::vector<double> y_tol = sum_bound(y_abs, in.c * win.k * win.k),
                                dx_tol = sum_bound(dx_abs, K * win.k * win.k), dw_tol = sum_bound(dw_abs, N * Ho * Wo);
      EXPECT_TRUE(all_close("conv forward", y_d.download(), y, {0, 1e-4}, &y_tol));
      EXPECT_TRUE(all_close("conv backward data", dx_d.download(), dx, {0, 1e-4}, &dx_tol));
      EXPECT_TRUE(all_close("conv backward filter", dw_d.download(), dw, {0, 1e-4}, &dw_tol));
      EXPECT_TRUE(y_d.guard_intact());
      EXPECT_TRUE(dx_d.guard_intact());
      EXPECT_TRUE(dw_d.guard_intact());
    }
  }
}

TEST_F(CudaLibraries, ConvRefusesAWindowWithNoOutput) {
  // A 5x5 filter on a 3x3 map with padding 0 has no output position; ConvOp says so before cuDNN is asked.
  EXPECT_THROW(cuda::ConvOp(*ctx_, Shape3{1, 3, 3}, 2, Window{5, 1, 0}), InternalError);
  EXPECT_THROW(cuda::ConvOp(*ctx_, Shape3{1, 3, 3}, 2, Window{3, 0, 0}), InternalError);
  EXPECT_NO_THROW(cuda::ConvOp(*ctx_, Shape3{1, 3, 3}, 2, Window{5, 1, 1}));
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
