// The fused kernel's block executors and the helpers every phase uses (kernels/fused/fused_optimize.cu).
//
// Why the block code is written as phases over an executor: it is a template over `Block`, whose phase(f) runs f
// for every thread id of the block and then waits for all of them. DeviceBlock does f(threadIdx.x) +
// __syncthreads(); HostBlock loops over the 448 thread ids (forward or reversed). The same source therefore runs,
// unchanged, in the host emulation (fused_optimize_emulate) that the tests use where there is no GPU. A phase's
// function may only write what its thread owns: the host runs the threads one after another, so a phase that
// reads what another thread of the same phase writes gives an order-dependent result, which the reversed order
// exposes.
#pragma once
#include <cuda_runtime.h>

namespace nudge::cuda::fused {

// Every block-level function is inlined into the kernel: its per-phase register tiles are sized so that the
// kernel's state plus the largest tile fit in the registers one of kThreads threads may use.
#define FUSED_HD __host__ __device__ __forceinline__
// Unrolling hints for the device compiler only: the host compiler sees this code too (the emulation) and would warn.
#define FUSED_PRAGMA(x) _Pragma(#x)
#ifdef __CUDA_ARCH__
#define FUSED_UNROLL(n) FUSED_PRAGMA(unroll n)
#define FUSED_UNROLL_ALL FUSED_PRAGMA(unroll)
#else
#define FUSED_UNROLL(n)
#define FUSED_UNROLL_ALL
#endif

// 448 threads = 14 warps: 65536 / 448 leaves 144 registers per thread, which conv2's 72-accumulator tiles need
// beside the kernel's own state (at 512 threads, 128 registers, ptxas spilled).
constexpr int kThreads = 448;

struct DeviceBlock {
  template <class F>
  __device__ __forceinline__ void phase(F&& f) {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
};

// Shared memory is a host buffer that starts as NaN in every block (fused_optimize_emulate), so a read of anything
// no earlier phase wrote poisons the results.
struct HostBlock {
  bool reverse;
  template <class F>
  void phase(F&& f) {
    for (int i = 0; i < kThreads; ++i) f(reverse ? kThreads - 1 - i : i);
  }
};

// Read-only data (weights, x0, targets) through the non-coherent cache; never for x, m, v or the best-* arrays,
// which this kernel writes.
template <class T>
FUSED_HD T ldg(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

FUSED_HD int imin(int a, int b) { return a < b ? a : b; }
FUSED_HD float relu(float x) { return x > 0.0f ? x : 0.0f; }  // as cpu::relu_forward (NaN -> 0)

}  // namespace nudge::cuda::fused
