// Fuzzes the ONNX importer (host/onnx): the protobuf parse, the tensor decoding with its size checks, the graph walk
// (branches, cycles, shape computations) and each op's attributes, then Model::from_safetensors' checks. A model that
// imports must export and import back to the same architecture and bits. Anything but an InputError is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "errors.h"
#include "model.h"
#include "onnx_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const nudge::Model m = nudge::model_from_onnx(bytes, "fuzz");
    const nudge::Model back = nudge::model_from_onnx(nudge::model_to_onnx(m), "again");
    if (!(back.arch == m.arch) || back.params.size() != m.params.size()) __builtin_trap();
    for (size_t i = 0; i < m.params.size(); ++i)
      if (std::memcmp(back.params[i].data.data(), m.params[i].data.data(), m.params[i].size() * 4) != 0) __builtin_trap();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
