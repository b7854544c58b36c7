// Fuzzes the IDX reader (MNIST-format datasets).
#include <cstddef>
#include <cstdint>
#include <string>

#include "dataset.h"
#include "errors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const nudge::IdxArray a = nudge::parse_idx(bytes, "fuzz");
    size_t count = 1;
    for (int d : a.dims) count *= static_cast<size_t>(d);
    if (count != a.bytes.size()) __builtin_trap();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
