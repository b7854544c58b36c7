/* Softmax plus cross-entropy / KL / Carlini-Wagner loss and its gradient with respect to the logits, per image,
 * against per-image targets (one-hot, soft distribution or untargeted), the twin of loss_forward_backward_one.
 *
 *   CrossEntropy: -sum_j t_j log p_j                  d/dz = p * sum(t) - t
 *   KL:           CE - H(t) (0 log 0 = 0)             same gradient
 *   CW one-hot c: max(max_{j!=c} z_j - z_c, -kappa)   d/dz = +1 at the best other class, -1 at c, while active
 *   Untargeted (true label y): CE/KL -> -log(1 - p_y) = lse(z) - lse(z without y), d/dz = p - q (q: softmax
 *   without y); CW -> max(z_y - max_{j!=y} z_j, -kappa).
 *
 * Numerics follow the CPU twin operation by operation: the maximum in float, the exponential sums, the logarithms and
 * the log-sum-exp in double (so logits of +-1e4 stay finite and precise), probabilities rounded to float once. The GPU's double exp/log are
 * within an ulp or two of glibc's, so results usually agree bit for bit after rounding to float.
 * Layout:    logits/probs/dlogits row-major [rows, K]; targets indexed by entry (see SoftmaxLossParams::entry).
 * Threads:   one thread per row; K is small (10), so a row's work is a few dozen double ops and no cooperation pays.
 * Precond.:  K >= 2; target_class in [0, K) for OneHot/Untargeted rows.
 * Checked by tests/test_cuda_parity.cpp: CudaKernels.SoftmaxLoss* and CudaKernels.Softmax.
 *
 * Cost per row ~ 3K double exp/log + 10K flops; bytes 4*K read, 8*K + 8 written (+4*K of target). At 100k rows of
 * K = 10: ~12 MB, about 10 us of bandwidth; the double transcendentals (~3M) are of the same order on an H100.
 */
#include "softmax_loss.cuh"

#include <cmath>

#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

constexpr int kThreads = 128;

// Max over j != skip (skip = -1: all), as the CPU twin's log_sum_exp; then sum_j exp(z_j - m) in double.
__device__ void max_and_sum(const float* z, int K, int skip, float* m_out, double* s_out) {
  float m = -INFINITY;
  for (int j = 0; j < K; ++j)
    if (j != skip) m = m < z[j] ? z[j] : m;  // std::max(m, z[j])
  double s = 0;
  for (int j = 0; j < K; ++j)
    if (j != skip) s += exp(static_cast<double>(z[j] - m));
  *m_out = m;
  *s_out = s;
}

__device__ int argmax_except(const float* z, int K, int skip) {
  int best = -1;
  for (int j = 0; j < K; ++j)
    if (j != skip && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

// Softmax into probs; returns the log-sum-exp of all logits, in double as the twin (with logits near 1e4 a float
// m + log(s) would keep only ~1e-3 of the loss's precision).
__device__ double softmax_row(const float* z, int K, float* probs) {
  float m;
  double s;
  max_and_sum(z, K, -1, &m, &s);
  for (int j = 0; j < K; ++j) probs[j] = static_cast<float>(exp(static_cast<double>(z[j] - m)) / s);
  return static_cast<double>(m) + log(s);
}

__device__ float loss_row(const float* z, int K, const float* t, TargetKind kind, int cls, LossKind loss,
                          float kappa, float divisor, float* probs, float* dz) {
  const double lse = softmax_row(z, K, probs);
  if (loss == LossKind::CarliniWagner && kind != TargetKind::Soft) {
    const int other = argmax_except(z, K, cls);
    const float margin = kind == TargetKind::OneHot ? z[other] - z[cls] : z[cls] - z[other];
    const bool active = margin > -kappa;
    if (dz) {
      for (int j = 0; j < K; ++j) dz[j] = 0.0f;
      if (active) {
        const float s = kind == TargetKind::OneHot ? 1.0f : -1.0f;
        dz[other] += s / divisor;
        dz[cls] -= s / divisor;
      }
    }
    return active ? margin : -kappa;
  }
  if (kind == TargetKind::Untargeted) {
    float m_o;
    double s_o;
    max_and_sum(z, K, cls, &m_o, &s_o);
    const double lse_other = static_cast<double>(m_o) + log(s_o);
    if (dz) {
      for (int j = 0; j < K; ++j) {
        // The CPU twin keeps q from its log-sum-exp pass up to 64 classes and recomputes it above that.
        const float q = j == cls ? 0.0f
                        : K <= 64 ? static_cast<float>(exp(static_cast<double>(z[j] - m_o)) / s_o)
                                  : static_cast<float>(exp(z[j] - lse_other));
        dz[j] = (probs[j] - q) / divisor;
      }
    }
    return static_cast<float>(lse - lse_other);
  }
  double ce = 0, tsum = 0, entropy = 0;
  for (int j = 0; j < K; ++j) {
    const float tj = t ? t[j] : (j == cls ? 1.0f : 0.0f);
    tsum += tj;
    if (tj > 0) {
      ce -= static_cast<double>(tj) * (z[j] - lse);
      entropy -= static_cast<double>(tj) * log(static_cast<double>(tj));
    }
  }
  if (dz)
    for (int j = 0; j < K; ++j) {
      const float tj = t ? t[j] : (j == cls ? 1.0f : 0.0f);
      dz[j] = static_cast<float>(probs[j] * tsum - tj) / divisor;
    }
  return static_cast<float>(loss == LossKind::KL ? ce - entropy : ce);
}

__global__ void __launch_bounds__(kThreads) softmax_loss_kernel(SoftmaxLossParams p) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= p.rows) return;
  const int K = p.K;
  const int e = p.entry ? p.entry[i] : i;
  const float* z = p.logits + static_cast<size_t>(i) * K;
  const TargetKind kind = p.target_kind ? static_cast<TargetKind>(p.target_kind[e]) : TargetKind::OneHot;
  const int cls = p.target_class[e];
  const float* t = p.target_dist ? p.target_dist + static_cast<size_t>(e) * K : nullptr;
  float* dz = p.dlogits ? p.dlogits + static_cast<size_t>(i) * K : nullptr;
  p.loss_out[i] = loss_row(z, K, t, kind, cls, p.loss, p.kappa, p.dlogits_divisor,
                           p.probs + static_cast<size_t>(i) * K, dz);
  // std::max_element: the first of equal maxima.
  if (p.correct) p.correct[i] = argmax_except(z, K, -1) == cls;
}

__global__ void __launch_bounds__(kThreads) softmax_kernel(const float* __restrict__ logits, int rows, int K,
                                                           float* __restrict__ probs) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= rows) return;
  softmax_row(logits + static_cast<size_t>(i) * K, K, probs + static_cast<size_t>(i) * K);
}

unsigned row_blocks(int rows) { return static_cast<unsigned>((rows + kThreads - 1) / kThreads); }

}  // namespace

void softmax_loss_cuda(const SoftmaxLossParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.K < 2) throw_shape_error("softmax_loss_cuda", "needs rows >= 0 and K >= 2");
  if (!p.logits || !p.probs || !p.loss_out || !p.target_class)
    throw_shape_error("softmax_loss_cuda", "logits, probs, loss_out and target_class are required");
  if (p.target_kind && !p.target_dist)
    throw_shape_error("softmax_loss_cuda", "per-entry target kinds need target distributions");
  if (!(p.dlogits_divisor > 0.0f)) throw_shape_error("softmax_loss_cuda", "dlogits_divisor must be positive");
  if (p.rows == 0) return;
  softmax_loss_kernel<<<row_blocks(p.rows), kThreads, 0, stream>>>(p);
  check_launch("softmax_loss_cuda", stream);
}

void softmax_cuda(const float* logits, int rows, int K, float* probs, cudaStream_t stream) {
  if (rows < 0 || K < 1) throw_shape_error("softmax_cuda", "needs rows >= 0 and K >= 1");
  if (rows == 0) return;
  softmax_kernel<<<row_blocks(rows), kThreads, 0, stream>>>(logits, rows, K, probs);
  check_launch("softmax_cuda", stream);
}

}  // namespace nudge::cuda
