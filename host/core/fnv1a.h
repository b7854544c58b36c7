// FNV-1a, 64 bits: the checksum of journal blocks and the digest that ties a resumed job to the very model files it
// began with. Not a cryptographic hash: it guards against damage and mix-ups, not against forgery.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nudge {

inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace nudge
