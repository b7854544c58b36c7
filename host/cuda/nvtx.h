// NVTX ranges for Nsight Systems / Nsight Compute (header-only NVTX3; costs a predictable branch when no tool is
// attached). Names must outlive the range: pass string literals or strings owned by a long-lived object.
#pragma once
#include <nvtx3/nvToolsExt.h>

namespace nudge::cuda {

class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace nudge::cuda
