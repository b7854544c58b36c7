// Stable compaction of the optimize chunk's active list. CPU twin: the `still` loop at the end of
// CpuOptimizeChunk::evaluate_and_update.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

// out[0..*out_count) = active[i] for the i < count with keep[i] != 0, in order. out must not overlap active;
// out_count is a device int.
void compact_active_cuda(const int32_t* active, const uint8_t* keep, int count, int32_t* out, int32_t* out_count,
                         cudaStream_t stream);

}  // namespace nudge::cuda
