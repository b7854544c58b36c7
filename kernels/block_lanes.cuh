// The device's block executor for the row code written as phases (host/core/apgd_rows.h, square_rows.h, fab_rows.h):
// a lane is a thread of the row's block, and a barrier follows each phase, so that a phase reads what the ones before
// it wrote. Its host twin is HostLanes (host/core/row_lanes.h), a loop over the lanes.
#pragma once
#include <math.h>
#include <stdint.h>

#include "row_lanes.h"

namespace nudge::cuda {

struct BlockLanes {
  template <class F>
  __device__ __forceinline__ void phase(F&& f) {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
};

// FAB's sort (fab_rows.h; the host's is a std::sort): pairs 0..n-1, with idx in [0, n) and distinct, into ascending
// (key, idx) order, by a bitonic network over `capacity` pairs (a power of two >= n). Positions [n, capacity) are
// padded with (+inf, position): after every real pair, +inf keys of the row's own included, since their idx is < n.
// (key, idx) is then a total order of distinct elements (keys are never NaN), whose sorted sequence is unique, so
// the result is the host's bit for bit; each key moves with its idx, so a -0.0 stays one. Every thread of the block
// (kRowLanes of them, as for all the row code) takes part, each stage a phase; the last phase's barrier lets later
// phases read the sorted arrays. The stride is that constant, not blockDim.x: a stride in a register makes each
// loop's trip count an integer division, and around those ptxas spilled 20 bytes in fab_update_kernel.
// Cost: log2(c) (log2(c) + 1) / 2 stages of c / 2 compare-exchanges (c = capacity): 55 stages of 512 at D = 784,
// two per thread each, ~55 barriers.
__device__ __forceinline__ void sort_pairs(BlockLanes& b, double* key, int32_t* idx, int n, int capacity) {
  constexpr int lanes = kRowLanes;
  b.phase([&](int lane) {
    for (int k = n + lane; k < capacity; k += lanes) {
      key[k] = INFINITY;
      idx[k] = k;
    }
  });
  const int pairs = capacity / 2;
  for (int size = 2; size <= capacity; size <<= 1)
    for (int stride = size / 2; stride > 0; stride /= 2)
      b.phase([&](int lane) {
        for (int p = lane; p < pairs; p += lanes) {
          // Pair p's lower position has bit `stride` clear: p's bits above it shifted up by one.
          const int lo = ((p & ~(stride - 1)) << 1) | (p & (stride - 1)), hi = lo + stride;
          const bool ascending = (lo & size) == 0;
          const double klo = key[lo], khi = key[hi];
          const int32_t ilo = idx[lo], ihi = idx[hi];
          const bool greater = klo > khi || (klo == khi && ilo > ihi);
          if (greater == ascending) {
            key[lo] = khi;
            key[hi] = klo;
            idx[lo] = ihi;
            idx[hi] = ilo;
          }
        }
      });
}

}  // namespace nudge::cuda
