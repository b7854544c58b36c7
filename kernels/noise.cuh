// Uniform noise images from the counter generator. CPU twin: noise_image (host/start_images.h), i.e.
// counter_uniform(seed, kStreamNoise, index, pixel).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

// out[i, p] = counter_uniform(seed, kStreamNoise, first_index + i, p) for i < n, p < D; bit-identical to the CPU.
void noise_images_cuda(float* out, int n, int D, uint64_t seed, uint64_t first_index, cudaStream_t stream);

}  // namespace nudge::cuda
