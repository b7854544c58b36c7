// A counter-based generator (Philox4x32-10, Salmon et al., SC'11): the random numbers for (seed, stream, index,
// block) are a pure function of those values, so image i's noise is the same whatever the chunk size, thread
// count, device or shard. Integer-only and header-only so that CUDA kernels compile the very same code and produce
// bit-identical floats.
#pragma once
#include <cstdint>

#include "host_device.h"

namespace nudge {

// Streams keep the generator's uses apart.
enum RngStream : uint32_t { kStreamNoise = 1, kStreamGauss = 2, kStreamRandomStart = 3, kStreamJitter = 4,
                            kStreamInit = 5, kStreamShuffle = 6, kStreamAdvTrain = 7, kStreamNonDigit = 8,
                            kStreamAugment = 9, kStreamDropout = 10, kStreamPcaStart = 11 };

struct Philox4 {
  uint32_t v[4];
};

NUDGE_HD uint32_t philox_mulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

NUDGE_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0 = philox_mulhi(kM0, c0), lo0 = kM0 * c0;
    uint32_t hi1 = philox_mulhi(kM1, c2), lo1 = kM1 * c2;
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// Four values for (seed, stream, index, block): block b covers elements 4b..4b+3 of item `index`.
NUDGE_HD Philox4 counter_random(uint64_t seed, uint32_t stream, uint64_t index, uint32_t block) {
  return philox4x32_10(block, static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), stream,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in [0,1) with 24 random bits: exact in float, identical on every device.
NUDGE_HD float uniform_from_bits(uint32_t u) { return static_cast<float>(u >> 8) * (1.0f / 16777216.0f); }

// Elements 0..count-1 of item `index`'s uniform sequence, four per Philox block (host code: noise images, random
// starts).
inline void counter_uniform_fill(uint64_t seed, uint32_t stream, uint64_t index, int count, float* out) {
  for (int p = 0; p < count; p += 4) {
    const Philox4 r = counter_random(seed, stream, index, static_cast<uint32_t>(p >> 2));
    for (int j = 0; j < 4 && p + j < count; ++j) out[p + j] = uniform_from_bits(r.v[j]);
  }
}

// Element e of item `index`'s uniform sequence.
NUDGE_HD float counter_uniform(uint64_t seed, uint32_t stream, uint64_t index, uint32_t e) {
  return uniform_from_bits(counter_random(seed, stream, index, e >> 2).v[e & 3]);
}

}  // namespace nudge
