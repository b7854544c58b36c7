// ONNX TensorProto and AttributeProto values, decoded with every size checked against the claimed dims before any
// allocation. Internal to host/onnx (it includes the protobuf classes).
#pragma once
#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace nudge::onnx_io {

// Float tensor (FLOAT data type; raw_data or float_data), at most kMaxParamElements values. `what` names it.
Tensor decode_float_tensor(const onnx::TensorProto& t, const std::string& what);
// Integer tensor (INT64 or INT32), at most 64 values (shapes, axes, indices).
std::vector<int64_t> decode_int_tensor(const onnx::TensorProto& t, const std::string& what);

// A node's attribute by name, or nullptr.
const onnx::AttributeProto* find_attribute(const onnx::NodeProto& node, const std::string& name);
int64_t int_attribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback, const std::string& who);
float float_attribute(const onnx::NodeProto& node, const std::string& name, float fallback, const std::string& who);
std::string string_attribute(const onnx::NodeProto& node, const std::string& name, const std::string& fallback,
                             const std::string& who);
// An INTS attribute; `present` (optional) says whether the node has it.
std::vector<int64_t> ints_attribute(const onnx::NodeProto& node, const std::string& name, const std::string& who,
                                    bool* present = nullptr);

// "[2,2]"
std::string ints_to_string(const std::vector<int64_t>& v);

}  // namespace nudge::onnx_io
