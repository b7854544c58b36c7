// Plain double-precision twins of the layer maths (naive loops, no BLAS), the whole network and the losses: the
// oracle the CPU layers, the CPU network and (later) the CUDA kernels are checked against. Written for clarity, not
// speed; the shapes in the tests are small. Layouts and conventions are those of host/cpu/cpu_layers.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "architecture.h"
#include "model.h"
#include "optimize_types.h"

namespace nudge::ref {

// ---- layers ---------------------------------------------------------------------------------------------------
// Convolution over `win` (k, stride, pad; zeros in the padding). x [N,in], w [K,in.c,k,k], b [K] ->
// y [N,K,win.out(in.h),win.out(in.w)].
std::vector<double> conv2d_forward(const std::vector<double>& x, int N, Shape3 in, const std::vector<double>& w,
                                   const std::vector<double>& b, int K, Window win);
// dx [N,in] from dy [N,K,Ho,Wo].
std::vector<double> conv2d_backward_data(const std::vector<double>& dy, int N, Shape3 in, const std::vector<double>& w,
                                         int K, Window win);
// dw [K,in.c,k,k] and db [K], summed over the batch.
void conv2d_backward_filter(const std::vector<double>& x, const std::vector<double>& dy, int N, Shape3 in, int K,
                            Window win, std::vector<double>& dw, std::vector<double>& db);
// Valid, stride 1.
inline std::vector<double> conv2d_forward(const std::vector<double>& x, int N, Shape3 in, const std::vector<double>& w,
                                          const std::vector<double>& b, int K, int k) {
  return conv2d_forward(x, N, in, w, b, K, Window{k, 1, 0});
}
inline std::vector<double> conv2d_backward_data(const std::vector<double>& dy, int N, Shape3 in,
                                                const std::vector<double>& w, int K, int k) {
  return conv2d_backward_data(dy, N, in, w, K, Window{k, 1, 0});
}
inline void conv2d_backward_filter(const std::vector<double>& x, const std::vector<double>& dy, int N, Shape3 in, int K,
                                   int k, std::vector<double>& dw, std::vector<double>& db) {
  conv2d_backward_filter(x, dy, N, in, K, Window{k, 1, 0}, dw, db);
}

std::vector<double> relu_forward(const std::vector<double>& x);
// dx = dy where y > 0 else 0.
std::vector<double> relu_backward(const std::vector<double>& y, const std::vector<double>& dy);

// Windows of `win`, padding never chosen; argmax is the index h*W+w within the input plane, ties to the first in
// row-major order (a strict > scan from the window's first real element).
void maxpool_forward(const std::vector<double>& x, int N, Shape3 in, Window win, std::vector<double>& y,
                     std::vector<int32_t>& argmax);
// dx [N,in]: each dy added at its window's argmax; everything else 0.
std::vector<double> maxpool_backward(const std::vector<double>& dy, const std::vector<int32_t>& argmax, int N,
                                     Shape3 in, Window win);
inline void maxpool_forward(const std::vector<double>& x, int N, Shape3 in, int p, std::vector<double>& y,
                            std::vector<int32_t>& argmax) {
  maxpool_forward(x, N, in, Window{p, p, 0}, y, argmax);
}
inline std::vector<double> maxpool_backward(const std::vector<double>& dy, const std::vector<int32_t>& argmax, int N,
                                            Shape3 in, int p) {
  return maxpool_backward(dy, argmax, N, in, Window{p, p, 0});
}
// Pad-free average pooling and its adjoint.
std::vector<double> avgpool_forward(const std::vector<double>& x, int N, Shape3 in, Window win);
std::vector<double> avgpool_backward(const std::vector<double>& dy, int N, Shape3 in, Window win);

// y [N,out] = x [N,in] w^T + b, w [out,in].
std::vector<double> dense_forward(const std::vector<double>& x, int N, int in, const std::vector<double>& w,
                                  const std::vector<double>& b, int out);
std::vector<double> dense_backward_data(const std::vector<double>& dy, int N, int in, const std::vector<double>& w,
                                        int out);
void dense_backward_params(const std::vector<double>& x, const std::vector<double>& dy, int N, int in, int out,
                           std::vector<double>& dw, std::vector<double>& db);

// Batch normalisation over [N, C, P]: y = gamma (x - mean) / sqrt(var + 1e-5) + beta per channel. batch_stats
// computes mean and the biased var of x over N and P (two passes) into mean/var; otherwise they are read.
std::vector<double> batch_norm_forward(const std::vector<double>& x, int N, int C, int P, const std::vector<double>& gamma,
                                       const std::vector<double>& beta, std::vector<double>& mean,
                                       std::vector<double>& var, bool batch_stats);

// ---- whole network --------------------------------------------------------------------------------------------
// Training mode for network_forward: bn normalises with the batch's statistics, and dropout layer `ordinal` keeps
// unit u of row r when keeps(ordinal, r, u) (a fixed mask: the test's draw), scaling by 1/(1-P). Without it (eval),
// bn uses its running statistics and dropout is the identity.
struct TrainMode {
  std::function<bool(int ordinal, int row, int unit)> keeps;
};

// What a forward pass went through, for telling whether a perturbation crossed a kink: the sign of every ReLU input
// and every max-pool argmax, in layer order.
struct ForwardTrace {
  std::vector<uint8_t> relu_positive;
  std::vector<int32_t> pool_argmax;
  // The smallest |ReLU input| and the smallest gap between a pool window's maximum and its runner-up: how far the
  // point is from the nearest kink (in activation units). Windows whose maximum is exactly 0 (all ReLU zeros) are
  // left out of the gap: they tie, but no gradient flows through them.
  double min_relu_margin = 1e300, min_pool_gap = 1e300;
  bool operator==(const ForwardTrace& o) const {
    return relu_positive == o.relu_positive && pool_argmax == o.pool_argmax;
  }
  bool operator!=(const ForwardTrace& o) const { return !(*this == o); }
};

// Logits [N, num_classes] of `arch` with params (one vector per Architecture::params() entry) on x [N, input].
std::vector<double> network_forward(const Architecture& arch, const std::vector<std::vector<double>>& params,
                                    const std::vector<double>& x, int N, ForwardTrace* trace = nullptr,
                                    const TrainMode* train = nullptr);
// A model's float parameters, exactly, in double.
std::vector<std::vector<double>> params_to_double(const Model& model);

// ---- losses ---------------------------------------------------------------------------------------------------
// The loss of one image from its logits, computed in double straight from the formulas in host/core/optimize_math.h (with
// log-sum-exp). branch (optional) identifies the piece of a piecewise loss (Carlini-Wagner: which other logit is
// the maximum and whether the margin is above -kappa), so a finite difference can tell when it straddles a kink.
double loss_one(const double* z, int K, const double* t, TargetKind kind, int cls, LossKind loss, double kappa,
                int* branch = nullptr);
std::vector<double> softmax(const double* z, int K);

// ---- checks and fills -----------------------------------------------------------------------------------------
struct CloseStats {
  double max_abs = 0, max_rel = 0;  // max |got-ref| and max |got-ref|/|ref| (over ref != 0)
  size_t worst = 0;                 // index with the largest |got-ref| / (atol + rtol|ref|)
  size_t mismatches = 0;
};

// Checks |got - ref| <= atol + rtol*|ref| for every element (a NaN in got fails). On failure adds a GoogleTest
// failure naming `what`, the max abs/rel error, the worst index and the first mismatching pairs. With the
// environment variable NUDGE_PRINT_ERRORS set it prints the measured errors even on success, for setting bounds.
CloseStats expect_close(const float* got, const double* ref, size_t n, double rtol, double atol,
                        const std::string& what);
CloseStats expect_close(const double* got, const double* ref, size_t n, double rtol, double atol,
                        const std::string& what);
CloseStats expect_close(const std::vector<float>& got, const std::vector<double>& ref, double rtol, double atol,
                        const std::string& what);

// Seeded fills: the same (n, lo, hi, seed) always gives the same values. Use a different seed per test case.
std::vector<float> random_uniform(size_t n, float lo, float hi, uint32_t seed);
std::vector<double> to_double(const std::vector<float>& v);
std::vector<double> to_double(const float* v, size_t n);
// Glorot weights (Model::glorot with `seed`) plus biases uniform in [-bias, bias]: zero biases would leave the
// bias paths of the checks untested. A bn's scale, running mean and variance are drawn too (see there).
Model random_model(const Architecture& arch, uint32_t seed, float bias = 0.1f);
// One pointer per parameter tensor, as CpuNetwork takes them.
std::vector<const float*> param_ptrs(const Model& model);

// A float output buffer for a call under test: `n` elements poisoned with NaN, then kGuard sentinel elements that
// must come back untouched.
class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 64;
  explicit GuardedBuffer(size_t n);
  float* data() { return buf_.data(); }
  const float* data() const { return buf_.data(); }
  size_t size() const { return n_; }
  // Re-poisons the payload (between calls that reuse the buffer).
  void poison();
  // Adds a failure naming `what` if any guard element changed.
  void expect_guard_intact(const std::string& what) const;
  std::vector<float> values() const { return std::vector<float>(buf_.begin(), buf_.begin() + n_); }

 private:
  size_t n_;
  std::vector<float> buf_;
};

// The same for int32 outputs (pool argmax): poisoned with -1, guarded with a sentinel.
class GuardedIndexBuffer {
 public:
  static constexpr size_t kGuard = 64;
  explicit GuardedIndexBuffer(size_t n);
  int32_t* data() { return buf_.data(); }
  const int32_t* data() const { return buf_.data(); }
  size_t size() const { return n_; }
  void expect_guard_intact(const std::string& what) const;
  std::vector<int32_t> values() const { return std::vector<int32_t>(buf_.begin(), buf_.begin() + n_); }

 private:
  size_t n_;
  std::vector<int32_t> buf_;
};

}  // namespace nudge::ref
