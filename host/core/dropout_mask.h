// Which units a dropout layer keeps in a training step: a pure function of (seed, step, row, layer, unit), so a run
// is the same bit for bit whatever the thread count, the slicing of the batch or the device, and a resumed run
// (whose step count comes back from the checkpoint) draws the masks the uninterrupted one drew. Host and device.
#pragma once
#include <cstdint>

#include "counter_rng.h"
#include "host_device.h"

namespace nudge {

// Row `row` of training step `step` (Adam's step count, from 1), the `ordinal`-th dropout layer of the model (from
// 0; at most 255, as the grammar has at most 256 layers), unit `unit` of that row (below 2^24, the per-image cap):
// kept when its 24-bit uniform is at least p. Each Philox block covers four consecutive units.
NUDGE_HD bool dropout_keeps(uint64_t seed, uint64_t step, uint32_t row, uint32_t ordinal, uint32_t unit, float p) {
  const uint64_t index = step << 32 | row;
  const uint32_t e = ordinal << 24 | unit;
  return counter_uniform(seed, kStreamDropout, index, e) >= p;
}

// 1 / (1 - p) in float: what inverted dropout multiplies the kept units by.
NUDGE_HD float dropout_scale(float p) { return static_cast<float>(1.0 / (1.0 - static_cast<double>(p))); }

}  // namespace nudge
