// The safetensors format: 8-byte little-endian header length, a JSON header, then raw tensor bytes.
// Parsing treats every byte as hostile: lengths, offsets, dtypes and shapes are checked before use.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor.h"

namespace nudge {

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;          // "__metadata__" (string values only)
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order of their data offsets
};

// Parses an in-memory file. `what` names it in error messages. Throws InputError on anything malformed:
// header length past the end, malformed JSON, unknown or non-F32 dtype, shape/byte-size mismatch, offsets outside
// the data or overlapping, data not fully covered.
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& what);
SafetensorsFile read_safetensors(const std::string& path);

std::string serialize_safetensors(const SafetensorsFile& file);
void write_safetensors(const std::string& path, const SafetensorsFile& file);  // atomic

}  // namespace nudge
