// The network's layer kernels and their library wrappers against their CPU twins (host/cpu/cpu_layers.h): bias add
// and ReLU (forward, in place, backward), the bias gradient, max-pooling forward and backward (deliberate ties
// included), Adam's parameter update, cuDNN convolution and cuBLAS dense layers (forward, backward data, backward
// filter/weights), and the staged uploader on the copy stream. Fresh seeded random inputs (NUDGE_TEST_SEED=<seed>
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

#if NUDGE_HAVE_CUDA
#include "adam.cuh"
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
