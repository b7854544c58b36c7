// Each row's class: the first maximum of its probabilities. CPU twin: the std::max_element the optimize engine
// applies to Backend::predict's output (host/optimize/optimize_engine.cpp), which an optimize chunk's first evaluation makes
// unnecessary (ChunkResult::start_class).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

// out[entry ? entry[r] : r] = argmax_k probs[r, k] for r < rows (the first of equal maxima); probs [rows, K].
void row_argmax_cuda(const float* probs, int rows, int K, const int32_t* entry, int32_t* out, cudaStream_t stream);

}  // namespace nudge::cuda
