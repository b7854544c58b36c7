/* Uniform noise start images: out[i, p] = counter_uniform(seed, kStreamNoise, first_index + i, p).
 *
 * The generator is host/core/counter_rng.h itself (Philox4x32-10, integer only, compiled here as __host__ __device__),
 * and the float is formed from 24 bits exactly, so every value is bit-identical to the CPU's.
 * Layout:    out row-major [n, D].
 * Threads:   one thread per (image, block of 4 pixels): one Philox call yields the 4 values of pixels 4b..4b+3.
 * Precond.:  n >= 0, D > 0.
 * entry_start_images_cuda: the same per optimize-chunk entry, image (first_row + i / epr) / rps, or a gray fill;
 * an optimize chunk's x0 then needs no upload (3 KB per MNIST entry, the largest input a chunk has).
 * Checked by tests/test_cuda_kernels_optimize.cpp: CudaKernels.NoiseBitIdentical,
 *            CudaKernels.EntryStartImagesBitIdentical.
 *
 * Cost: Philox-10 is ~10 x (2 mul.hi + 2 mul + 4 xor/add) ~ 120 integer ops per 4 pixels, 4 bytes written per
 * pixel. 10k MNIST images = 7.8M pixels: ~0.25 G int ops and 31 MB, well under 0.1 ms on an H100.
 */
#include "noise.cuh"

#include "counter_rng.h"
#include "cuda_check.h"
#include "launch.h"

namespace nudge::cuda {

namespace {

__global__ void noise_images_kernel(float* __restrict__ out, int D, uint64_t seed, uint64_t first_index,
                                    size_t total_blocks) {
  const int blocks_per_image = (D + 3) / 4;
  for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < total_blocks;
       k += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t i = k / blocks_per_image;
    const uint32_t b = static_cast<uint32_t>(k % blocks_per_image);
    const Philox4 r = counter_random(seed, kStreamNoise, first_index + i, b);
    float* row = out + i * D;
    for (int q = 0; q < 4; ++q) {
      const uint32_t pixel = 4 * b + q;
      if (pixel < static_cast<uint32_t>(D)) row[pixel] = uniform_from_bits(r.v[q]);
    }
  }
}

__global__ void entry_start_images_kernel(float* __restrict__ out, int D, EntryStarts st, size_t total_blocks) {
  const int blocks_per_image = (D + 3) / 4;
  for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < total_blocks;
       k += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t i = k / blocks_per_image;
    const uint32_t b = static_cast<uint32_t>(k % blocks_per_image);
    float v[4] = {st.gray_value, st.gray_value, st.gray_value, st.gray_value};
    if (!st.gray) {
      const uint64_t image =
          static_cast<uint64_t>(st.first_row + static_cast<int64_t>(i / st.entries_per_row)) / st.rows_per_source;
      const Philox4 r = counter_random(st.seed, kStreamNoise, image, b);
      for (int q = 0; q < 4; ++q) v[q] = uniform_from_bits(r.v[q]);
    }
    float* row = out + i * D;
    for (int q = 0; q < 4; ++q) {
      const uint32_t pixel = 4 * b + q;
      if (pixel < static_cast<uint32_t>(D)) row[pixel] = v[q];
    }
  }
}

}  // namespace

void entry_start_images_cuda(float* out, int n, int D, const EntryStarts& starts, cudaStream_t stream) {
  if (n < 0 || D <= 0) throw_shape_error("entry_start_images_cuda", "needs n >= 0 and D > 0");
  if (starts.entries_per_row < 1 || starts.rows_per_source < 1 || starts.first_row < 0)
    throw_shape_error("entry_start_images_cuda", "needs entries_per_row >= 1, rows_per_source >= 1, first_row >= 0");
  const size_t total_blocks = static_cast<size_t>(n) * ((D + 3) / 4);
  if (total_blocks == 0) return;
  entry_start_images_kernel<<<elementwise_blocks(total_blocks), kElementwiseThreads, 0, stream>>>(out, D, starts,
                                                                                                 total_blocks);
  check_launch("entry_start_images_cuda", stream);
}

void noise_images_cuda(float* out, int n, int D, uint64_t seed, uint64_t first_index, cudaStream_t stream) {
  if (n < 0 || D <= 0) throw_shape_error("noise_images_cuda", "needs n >= 0 and D > 0");
  const size_t total_blocks = static_cast<size_t>(n) * ((D + 3) / 4);
  if (total_blocks == 0) return;
  noise_images_kernel<<<elementwise_blocks(total_blocks), kElementwiseThreads, 0, stream>>>(out, D, seed, first_index,
                                                                                           total_blocks);
  check_launch("noise_images_cuda", stream);
}

}  // namespace nudge::cuda
