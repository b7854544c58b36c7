// The lanes of row code written as phases over a block executor (apgd_rows.h, square_rows.h, square_l2_rows.h,
// fab_rows.h; the fused kernel's pattern, kernels/fused/block.cuh): `b.phase(f)` runs f(lane) for lanes
// 0..kRowLanes-1 and then waits for all of them. On the device a lane is a thread of the row's block
// (kernels/block_lanes.cuh); on the host, HostLanes loops over the lanes, so the CPU runs the very code the GPU does.
// A phase writes only what its lane owns (pixels lane, lane + kRowLanes, ... and partial[lane]); a sum over a row is
// each lane's partial, then a phase in which lane 0 adds the partials in lane order (reduce_lanes), so both executors
// add in the same order.
#pragma once
#include <math.h>
#include <stdint.h>

#include "host_device.h"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <utility>
#include <vector>
#endif

namespace nudge {

constexpr int kRowLanes = 256;

// The host executor: lanes one after another, forward or reversed (a phase that depended on lane order would give
// different bits in the two orders; tests run both).
struct HostLanes {
  bool reverse = false;
  template <class F>
  void phase(F&& f) {
    for (int i = 0; i < kRowLanes; ++i) f(reverse ? kRowLanes - 1 - i : i);
  }
};

// The phase after the one that wrote partial[0..kRowLanes): lane 0 reduces them, in lane order, into *total.
template <class Block>
NUDGE_HD void reduce_lanes(Block& b, const double* partial, double* total, bool max) {
  b.phase([&](int lane) {
    if (lane != 0) return;
    double s = 0;
    for (int i = 0; i < kRowLanes; ++i) s = max ? fmax(s, partial[i]) : s + partial[i];
    *total = s;
  });
}

#if !defined(__CUDA_ARCH__)
// The host executor's sort (fab_rows.h's projections; the card's is a bitonic network, kernels/block_lanes.cuh):
// pairs 0..n-1, which arrive with idx[k] = k, into ascending (key, idx) order. Most keys of an image's box are the
// row's smallest or largest (pixels at 0 or 1; L2's excluded coordinates at +inf); those two groups are already in
// idx order as they come, so only the keys between them are sorted: the same order as sorting all of them, at a
// fraction of the cost.
inline void sort_pairs(HostLanes&, double* key, int32_t* idx, int n, int capacity) {
  (void)capacity;
  if (n <= 1) return;
  thread_local std::vector<std::pair<double, int32_t>> buf;
  buf.clear();
  double lo = key[0], hi = key[0];
  for (int k = 1; k < n; ++k) {
    lo = std::min(lo, key[k]);
    hi = std::max(hi, key[k]);
  }
  for (int k = 0; k < n; ++k)
    if (key[k] == lo) buf.emplace_back(key[k], idx[k]);
  const size_t mid = buf.size();
  for (int k = 0; k < n; ++k)
    if (key[k] != lo && key[k] != hi) buf.emplace_back(key[k], idx[k]);
  std::sort(buf.begin() + static_cast<std::ptrdiff_t>(mid), buf.end());
  if (hi != lo)
    for (int k = 0; k < n; ++k)
      if (key[k] == hi) buf.emplace_back(key[k], idx[k]);
  for (int k = 0; k < n; ++k) {
    key[k] = buf[k].first;
    idx[k] = buf[k].second;
  }
}
#endif

}  // namespace nudge
