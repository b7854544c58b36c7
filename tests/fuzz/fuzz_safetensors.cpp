// Fuzzes the safetensors reader (header and tensors) and the model built from it: Model::from_safetensors parses the
// architecture string in the metadata and checks every tensor's shape and values. Anything but an InputError is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "errors.h"
#include "model.h"
#include "safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    nudge::SafetensorsFile file = nudge::parse_safetensors(bytes, "fuzz");
    // A file that parses must serialize and parse back to the same tensors.
    const nudge::SafetensorsFile again = nudge::parse_safetensors(nudge::serialize_safetensors(file), "again");
    if (again.tensors.size() != file.tensors.size()) __builtin_trap();
    nudge::Model::from_safetensors(std::move(file), "fuzz");
  } catch (const nudge::InputError&) {
  }
  return 0;
}
