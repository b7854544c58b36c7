// Grid arithmetic shared by the kernel launchers in kernels/ (host code only).
#pragma once
#include <algorithm>
#include <cstddef>

namespace nudge::cuda {

constexpr int kElementwiseThreads = 256;
// Grid-stride kernels need no more blocks than fill the card many times over: 65536 blocks of 256 threads is
// 124 waves of 132 SMs x 2048 threads on an H100 and keeps the block count within every limit.
constexpr size_t kMaxElementwiseBlocks = 65536;

inline unsigned elementwise_blocks(size_t total, int threads = kElementwiseThreads) {
  const size_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(std::max<size_t>(1, std::min(blocks, kMaxElementwiseBlocks)));
}

}  // namespace nudge::cuda
