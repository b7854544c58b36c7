/* One optimizer step on the pixels of every active entry, fused with the projection (the twin of input_update_one):
 *   Adam:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  x -= lr (m / c1) / (sqrt(v / c2) + eps),
 *          c1 = 1 - b1^t, c2 = 1 - b2^t, t = the entry's own update count after this step (1-based)
 *   SGD:   x -= lr g          Sign: x -= lr sign(g)
 * then Linf: clip to [x0 - eps, x0 + eps];  L2: if |x - x0|_2 > eps, x = x0 + (x - x0) eps / |x - x0|_2 (norm summed
 * in double, as the CPU); then clamp to [0, 1].
 * Layout:    grad by row [rows, D]; x, x0, m, v by entry [entries, D]; row-major.
 * Threads:   one 256-thread block per row. Each thread strides over the row's pixels; L2 needs the whole row's norm,
 *            so the updated pixels are written, the block reduces the squared distance, and a second pass (the
 *            same thread re-reading its own pixels) scales and clamps. Linf and None finish in the first pass.
 *            Rows whose keep flag is 0 return at once (uniformly for the block).
 * Precond.:  entries in `entry` are distinct; m and v non-null for Adam; eps non-null unless norm is None.
 * Numerics:  the GPU contracts multiply-adds into FMAs and its powf differs from glibc's by an ulp or so, so the
 *            result matches the twin to a few ulps, not bit for bit.
 * Checked by tests/test_cuda_kernels_optimize.cpp: CudaKernels.InputStep (every optimizer x norm, with skipped rows).
 *
 * Cost per pixel: Adam ~15 flops + a sqrt and a division; bytes: Adam reads g, x, x0, m, v and writes x, m, v
 * (32 B/pixel), SGD/Sign 16 B/pixel (+8 B for the L2 second pass, mostly from L1/L2). 100k MNIST rows with Adam move
 * 2.5 GB: ~0.85 ms at ~3 TB/s, the floor this kernel should approach.
 */
#include "input_step.cuh"

#include "cuda_check.h"
#include "optimize_math.h"

namespace nudge::cuda {

namespace {

constexpr int kThreads = 256;

__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  __shared__ double total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;  // valid in every thread
}

__global__ void __launch_bounds__(kThreads) input_step_kernel(InputStepParams p) {
  const int i = blockIdx.x;
  if (p.keep && !p.keep[i]) return;
  const int e = p.entry[i];
  const int D = p.D;
  const size_t row = static_cast<size_t>(e) * D;
  const float* g = p.grad + static_cast<size_t>(i) * D;
  float* x = p.x + row;
  const float* x0 = p.x0 + row;
  const int t = p.steps_done[e] + 1;
  const float eps = p.norm == Norm::None ? 0.0f : p.eps[e];
  const PixelStep st{p.optimizer, p.lr, p.beta1, p.beta2, p.adam_eps,
                     adam_correction(p.optimizer, p.beta1, p.beta2, t)};
  const bool adam = p.optimizer == InputOptimizer::Adam;
  double sq = 0;
  for (int j = threadIdx.x; j < D; j += kThreads) {
    float xj = move_pixel(st, x[j], g[j], adam ? p.m + row + j : nullptr, adam ? p.v + row + j : nullptr);
    if (p.norm == Norm::Linf) xj = linf_clip(xj, x0[j], eps);
    if (p.norm == Norm::L2) {
      const double d = static_cast<double>(xj - x0[j]);
      sq += d * d;
      x[j] = xj;  // clamped in the second pass, after the norm is known
    } else {
      x[j] = clamp01(xj);
    }
  }
  if (p.norm != Norm::L2) {
    // Every thread read steps_done[e] at its start (t above); without this barrier thread 0 could write the new
    // count before a later warp has read the old one, and that warp would use t + 1 for its pixels' bias
    // correction. (The L2 path is ordered by the barriers in block_sum.) p.norm is uniform: no divergence.
    __syncthreads();
    if (threadIdx.x == 0) p.steps_done[e] = t;
    return;
  }
  const L2Scale f = l2_scale(block_sum(sq), eps);
  for (int j = threadIdx.x; j < D; j += kThreads) x[j] = clamp01(l2_scaled(x[j], x0[j], f));
  if (threadIdx.x == 0) p.steps_done[e] = t;
}

}  // namespace

void input_step_cuda(const InputStepParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.D <= 0) throw_shape_error("input_step_cuda", "needs rows >= 0 and D > 0");
  if (!p.entry || !p.grad || !p.x || !p.x0 || !p.steps_done)
    throw_shape_error("input_step_cuda", "entry, grad, x, x0 and steps_done are required");
  if (p.optimizer == InputOptimizer::Adam && (!p.m || !p.v)) throw_shape_error("input_step_cuda", "Adam needs m and v");
  if (p.norm != Norm::None && !p.eps) throw_shape_error("input_step_cuda", "a norm ball needs eps");
  if (p.rows == 0) return;
  input_step_kernel<<<p.rows, kThreads, 0, stream>>>(p);
  check_launch("input_step_cuda", stream);
}

}  // namespace nudge::cuda
