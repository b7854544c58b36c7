/* Softmax plus cross-entropy / KL / Carlini-Wagner loss and its gradient with respect to the logits, per image,
 * against per-image targets (one-hot, soft distribution or untargeted), the twin of loss_forward_backward_one.
 *
 *   CrossEntropy: -sum_j t_j log p_j                  d/dz = p * sum(t) - t
 *   KL:           CE - H(t) (0 log 0 = 0)             same gradient
 *   CW one-hot c: max(max_{j!=c} z_j - z_c, -kappa)   d/dz = +1 at the best other class, -1 at c, while active
 *   Untargeted (true label y): CE/KL -> -log(1 - p_y) = lse(z) - lse(z without y), d/dz = p - q (q: softmax
 *   without y); CW -> max(z_y - max_{j!=y} z_j, -kappa).
 *
 * The maths is the CPU's own (host/core/optimize_math.h: loss_forward_backward_one, log_sum_exp), so the two differ
 * only by the GPU's double exp/log, within an ulp or two of glibc's: results usually agree bit for bit in float.
 * Layout:    logits/probs/dlogits row-major [rows, K]; targets indexed by entry (see SoftmaxLossParams::entry).
 * Threads:   one thread per row; K is small (10), so a row's work is a few dozen double ops and no cooperation pays.
 * Precond.:  K >= 2; target_class in [0, K) for OneHot/Untargeted rows.
 * Checked by tests/test_cuda_kernels_loss.cpp: CudaLossKernels.SoftmaxLoss* and CudaLossKernels.Softmax.
 *
 * Cost per row ~ 3K double exp/log + 10K flops; bytes 4*K read, 8*K + 8 written (+4*K of target). At 100k rows of
 * K = 10: ~12 MB, about 10 us of bandwidth; the double transcendentals (~3M) are of the same order on an H100.
 */
#include "softmax_loss.cuh"

#include <cmath>

#include "cuda_check.h"
#include "launch.h"
#include "optimize_math.h"

namespace nudge::cuda {

namespace {

constexpr int kThreads = 128;

// The minimum-blocks hint (4 x 128 threads, so up to 128 registers) lets ptxas keep the loss's doubles in registers:
// without it, it chose 40 registers and an 8-byte spill for this kernel.
__global__ void __launch_bounds__(kThreads, 4) softmax_loss_kernel(SoftmaxLossParams p) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= p.rows) return;
  const int K = p.K;
  const int e = p.entry ? p.entry[i] : i;
  const float* z = p.logits + static_cast<size_t>(i) * K;
  const TargetKind kind = p.target_kind ? static_cast<TargetKind>(p.target_kind[e]) : TargetKind::OneHot;
  const int cls = p.target_class[e];
  const float* t = p.target_dist ? p.target_dist + static_cast<size_t>(e) * K : nullptr;
  float* dz = p.dlogits ? p.dlogits + static_cast<size_t>(i) * K : nullptr;
  p.loss_out[i] = loss_forward_backward_one(z, K, t, kind, cls, p.loss, p.kappa, p.probs + static_cast<size_t>(i) * K,
                                            dz, p.dlogits_divisor);
  // std::max_element: the first of equal maxima.
  if (p.correct) p.correct[i] = argmax_except(z, K, -1) == cls;
}

__global__ void __launch_bounds__(kThreads) softmax_kernel(const float* __restrict__ logits, int rows, int K,
                                                           float* __restrict__ probs) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= rows) return;
  softmax(logits + static_cast<size_t>(i) * K, K, probs + static_cast<size_t>(i) * K);
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
