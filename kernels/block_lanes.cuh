// The device's block executor for the row code written as phases (host/core/apgd_rows.h, square_rows.h): a lane is
// a thread of the row's block, and a barrier follows each phase, so that a phase reads what the ones before it wrote.
// Its host twin is ApgdHostLanes (apgd_rows.h), a loop over the lanes.
#pragma once

namespace nudge::cuda {

struct BlockLanes {
  template <class F>
  __device__ __forceinline__ void phase(F&& f) {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
};

}  // namespace nudge::cuda
