/* TRADES' loss CE(z, y) + beta * KL(softmax(z) || softmax(za)) and its gradients with respect to both the clean
 * logits z and the attacked logits za, per example; the maths is trades_loss_one (host/core/optimize_math.h), compiled here
 * for the device from the same source as the CPU backend's.
 *
 * Layout:    logits and dlogits row-major [2n, K], example i's clean row i and attacked row n + i.
 * Threads:   one thread per example; K is small (10), so its ~4K double exp/log are done by one thread.
 * Precond.:  K >= 2; labels in [0, K).
 * Numerics:  log-sum-exp and all sums in double, gradients rounded to float once; the device's double exp/log are
 *            within an ulp or two of glibc's, so the CPU twin agrees to float rounding.
 * Checked by tests/test_cuda_kernels_loss.cpp (CudaKernels.TradesLossMatchesCpu); the shared maths against central
 *            differences in tests/test_adversarial_training.cpp; the backend's step that calls it in
 *            tests/test_cuda_parity_training.cpp (CudaBackendParity.TrainStepTrades).
 * Cost:      per example ~4K double transcendentals and 16K bytes moved at K = 10: a training batch of a few hundred
 *            examples is a few microseconds, launch-bound.
 */
#include "trades_loss.cuh"

#include "cuda_check.h"
#include "launch.h"
#include "optimize_math.h"

namespace nudge::cuda {

namespace {

constexpr int kThreads = 128;

__device__ int first_argmax(const float* z, int K) {
  int best = 0;
  for (int j = 1; j < K; ++j)
    if (z[j] > z[best]) best = j;
  return best;
}

__global__ void trades_loss_kernel(TradesLossParams p) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const size_t K = static_cast<size_t>(p.K);
  const float* z = p.logits + i * K;
  const float* za = p.logits + (p.n + i) * K;
  const int y = p.labels[i];
  const TradesTerms t = trades_loss_one(z, za, p.K, y, p.beta, p.scale, p.dlogits + i * K, p.dlogits + (p.n + i) * K);
  p.ce[i] = static_cast<float>(t.ce);
  p.kl[i] = static_cast<float>(t.kl);
  p.clean_correct[i] = first_argmax(z, p.K) == y;
  p.adv_correct[i] = first_argmax(za, p.K) == y;
}

}  // namespace

void trades_loss_cuda(const TradesLossParams& p, cudaStream_t stream) {
  if (p.n < 0 || p.K < 2) throw_shape_error("trades_loss_cuda", "needs n >= 0 and K >= 2");
  if (!p.logits || !p.labels || !p.dlogits || !p.ce || !p.kl || !p.clean_correct || !p.adv_correct)
    throw_shape_error("trades_loss_cuda", "every buffer is required");
  if (p.n == 0) return;
  const unsigned blocks = static_cast<unsigned>((p.n + kThreads - 1) / kThreads);
  trades_loss_kernel<<<blocks, kThreads, 0, stream>>>(p);
  check_launch("trades_loss_cuda", stream);
}

}  // namespace nudge::cuda
