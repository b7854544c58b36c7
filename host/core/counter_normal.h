// Standard normal pairs from the counter generator: Box-Muller on the first two words of one Philox block, in
// double. Host-only (double log/cos/sin differ between host and device libraries; see backend.h on Gauss starts).
#pragma once
#include <cmath>
#include <cstdint>

#include "counter_rng.h"

namespace nudge {

// Two independent N(0,1) draws for (seed, stream, index, block): z[0] = r cos(2 pi u2), z[1] = r sin(2 pi u2) with
// r = sqrt(-2 log(1 - u1)); 1 - u1 keeps the logarithm's argument in (0, 1].
inline void counter_normal_pair(uint64_t seed, uint32_t stream, uint64_t index, uint32_t block, double z[2]) {
  const Philox4 r = counter_random(seed, stream, index, block);
  const double u1 = 1.0 - uniform_from_bits(r.v[0]), u2 = uniform_from_bits(r.v[1]);
  const double rad = std::sqrt(-2.0 * std::log(u1));
  z[0] = rad * std::cos(2 * M_PI * u2);
  z[1] = rad * std::sin(2 * M_PI * u2);
}

}  // namespace nudge
