// Uniform noise images from the counter generator. CPU twin: noise_image (host/optimize/start_images.h), i.e.
// counter_uniform(seed, kStreamNoise, index, pixel).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nudge::cuda {

// out[i, p] = counter_uniform(seed, kStreamNoise, first_index + i, p) for i < n, p < D; bit-identical to the CPU.
void noise_images_cuda(float* out, int n, int D, uint64_t seed, uint64_t first_index, cudaStream_t stream);

// An optimize chunk's start images, made on the device (host/core/backend.h, GeneratedStarts): entry i is image
// (first_row + i / entries_per_row) / rows_per_source: noise as above, or gray (every pixel gray_value).
struct EntryStarts {
  bool gray = false;
  float gray_value = 0.5f;
  uint64_t seed = 0;
  int64_t first_row = 0;
  int entries_per_row = 1, rows_per_source = 1;
};
void entry_start_images_cuda(float* out, int n, int D, const EntryStarts& starts, cudaStream_t stream);

}  // namespace nudge::cuda
