// The CUDA backend against the CPU backend on the reference architecture with random weights, through the Backend
// interface and through the networks themselves: predict, input gradients for every loss, the whole backward pass
// (every parameter gradient), an image in a batch of 300 against the same image alone, and logit_backprop (the
// logits its callback sees, the input gradient, the forward-only path, a throwing callback, batches larger than the
// GPU's slice); plus the device-availability contract, which is checked on every machine (a machine without a GPU
// must fall back to the CPU with a reason).
//
// Inputs for gradient comparisons are drawn away from decision boundaries (clean_images, tests/support/
// cuda_parity_fixture.h). Network-level tolerances are relative to each tensor's scale (atol = c * max|ref|): small
// elements of a gradient are sums with cancellation, whose rounding error scales with the terms, not with the result.
// The constants are ~10x the error expected from compounding per-layer FP32 reordering (~1e-6 of scale per layer);
// tighten them from the maxima the first GPU runs print.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"
#include "cpu_backend.h"
#include "cpu_network.h"
#include "cuda_parity_fixture.h"
#include "cuda_test_util.h"
#include "errors.h"
#include "make_backend.h"
#include "model.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#include "cuda_context.h"
#include "cuda_network.h"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::clean_images;
using test::CudaBackendParity;
using test::scaled;

// ---- availability: runs everywhere ---------------------------------------------------------------------------------

TEST(CudaAvailability, UsableOrFallsBackToCpuWithReason) {
  std::string why;
  const bool usable = cuda_device_usable(&why);
  std::printf("[   INFO   ] cuda_device_usable: %s%s\n", usable ? "yes" : "no: ", why.c_str());
  if (usable) {
    EXPECT_TRUE(why.empty());
    auto b = make_backend("auto");
    EXPECT_TRUE(b->is_gpu()) << b->name();
    return;
  }
  EXPECT_FALSE(why.empty()) << "an unusable device must come with a reason";
  auto b = make_backend("auto");
  EXPECT_FALSE(b->is_gpu()) << b->name();
  EXPECT_THROW(make_backend("cuda"), InputError);
}

// ---- predict and gradients ---------------------------------------------------------------------------------------

TEST_F(CudaBackendParity, Predict) {
  check_predict(300);
}

TEST_F(CudaBackendParity, InputGradientAllLosses) {
  check_input_gradient_all_losses(60);
}

// The whole backward pass, every parameter gradient included, through the networks themselves (the Backend
// interface exposes parameter gradients only through Adam steps).
TEST_F(CudaBackendParity, NetworkForwardBackward) {
  check_network_forward_backward(24);
}

// GPU against itself: an image in a batch of 300 gives what it gives alone (other algorithms, other tiling).
TEST_F(CudaBackendParity, ImageInBatchMatchesImageAlone) {
  check_image_in_batch(300, {0, 1, 137, 299});
}

// logit_backprop with a fixed dlogits callback: the logits the callback sees, the input gradient of sum dlogits . z,
// the forward-only path (grad null, whatever the callback writes is ignored), and a throwing callback.
TEST_F(CudaBackendParity, LogitBackprop) {
  const int n = 60;
  const std::vector<float> x = clean_images(model_, n, rng_);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> fixed(static_cast<size_t>(n) * K_);
  for (float& v : fixed) v = nd(rng_);
  // Rows are handed out in disjoint slices (the CPU's may run at once on several threads): each records its own.
  struct Seen {
    std::vector<float> logits;
    std::vector<int> calls;
  };
  auto run = [&](Backend& b, float* grad, bool write_nan) {
    Seen s{std::vector<float>(static_cast<size_t>(n) * K_, NAN), std::vector<int>(n, 0)};
    b.logit_backprop(x.data(), n, [&](int first, int m, const float* z, float* dz) {
      std::copy_n(z, static_cast<size_t>(m) * K_, s.logits.begin() + static_cast<size_t>(first) * K_);
      for (int i = 0; i < m; ++i) ++s.calls[first + i];
      for (size_t k = 0; k < static_cast<size_t>(m) * K_; ++k)
        dz[k] = write_nan ? NAN : fixed[static_cast<size_t>(first) * K_ + k];
    }, grad);
    for (int i = 0; i < n; ++i) EXPECT_EQ(s.calls[i], 1) << b.name() << ": row " << i << " handed to the callback";
    return s;
  };
  std::vector<float> gc(static_cast<size_t>(n) * D_), gg(gc.size(), NAN);
  const Seen sc = run(*cpu_, gc.data(), false), sg = run(*gpu_, gg.data(), false);
  // The same forward and backward as NetworkForwardBackward's, with the same bounds.
  EXPECT_TRUE(all_close("logits", sg.logits, sc.logits, scaled(sc.logits, 1e-5)));
  EXPECT_TRUE(all_close("input gradient", gg, gc, scaled(gc, 1e-4)));

  // Forward only: the callback's dlogits (NaN here) are ignored and nothing is written through the null grad; the
  // gradient call after the throw below would also show a backward left half done.
  const Seen fg = run(*gpu_, nullptr, true);
  EXPECT_TRUE(all_close("logits (forward only)", fg.logits, sc.logits, scaled(sc.logits, 1e-5)));

  // A throwing callback: the exception reaches the caller as it was thrown (nothing is left queued on the stream
  // that reads host memory), and the backend stays usable.
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    SCOPED_TRACE(b->name());
    std::vector<float> gx(gc.size());
    try {
      const auto refuse = [](int, int, const float*, float*) { throw std::runtime_error("callback refused"); };
      b->logit_backprop(x.data(), n, refuse, gx.data());
      ADD_FAILURE() << "a throwing callback must propagate";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "callback refused");
    }
  }
  std::vector<float> again(gc.size(), NAN);
  run(*gpu_, again.data(), false);
  EXPECT_TRUE(all_close("input gradient after a throw", again, gc, scaled(gc, 1e-4)));
}

// Batches larger than the GPU's slice (4096 images) reach the callback row by row once each, with the logits a small
// batch of the same rows gives (forward only: no gradient, so no ties to avoid).
TEST_F(CudaBackendParity, LogitBackpropAcrossSlices) {
  const int n = 4096 + 37;
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * D_);
  for (float& v : x) v = u(rng_);
  std::vector<float> big(static_cast<size_t>(n) * K_, NAN);
  std::vector<int> calls(n, 0);
  gpu_->logit_backprop(x.data(), n, [&](int first, int m, const float* z, float*) {
    std::copy_n(z, static_cast<size_t>(m) * K_, big.begin() + static_cast<size_t>(first) * K_);
    for (int i = 0; i < m; ++i) ++calls[first + i];
  }, nullptr);
  EXPECT_TRUE(all_equal("rows handed to the callback", calls, std::vector<int>(n, 1)));
  const int tail = 50, from = n - tail;  // straddles the slice boundary
  std::vector<float> small(static_cast<size_t>(tail) * K_, NAN);
  gpu_->logit_backprop(x.data() + static_cast<size_t>(from) * D_, tail, [&](int first, int m, const float* z, float*) {
    std::copy_n(z, static_cast<size_t>(m) * K_, small.begin() + static_cast<size_t>(first) * K_);
  }, nullptr);
  const std::vector<float> big_tail(big.begin() + static_cast<size_t>(from) * K_, big.end());
  // Other batch sizes may take other cuDNN/cuBLAS algorithms: the logits' cross-device bound applies.
  EXPECT_TRUE(all_close("logits by slice vs alone", big_tail, small, scaled(small, 1e-5)));
}

#else  // !NUDGE_HAVE_CUDA

TEST(CudaParity, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
