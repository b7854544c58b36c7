// Row gather: the active entries' iterates into a dense batch for the network. CPU twin: the std::copy_n loop in
// CpuOptimizeChunk::evaluate_and_update.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

// dst[i, :] = src[rows[i], :] for i < count; src [*, D], dst [count, D].
void gather_rows_cuda(const float* src, const int32_t* rows, int count, int D, float* dst, cudaStream_t stream);

}  // namespace nudge::cuda
