#include "onnx_tensors.h"

#include <cstring>

#include "architecture.h"
#include "errors.h"

namespace nudge::onnx_io {

namespace {

// The element count of `dims`, refusing negative dims and products beyond `cap` as soon as they pass it (so the
// product never overflows).
int64_t checked_count(const onnx::TensorProto& t, int64_t cap, const std::string& what) {
  if (t.dims_size() > 8) throw InputError(what + " has " + std::to_string(t.dims_size()) + " dimensions");
  int64_t n = 1;
  for (int64_t d : t.dims()) {
    if (d < 0) throw InputError(what + " has a negative dimension " + std::to_string(d));
    if (d != 0 && n > cap / d)
      throw InputError(what + " has more than " + std::to_string(cap) + " elements (dims " +
                       ints_to_string({t.dims().begin(), t.dims().end()}) + ")");
    n *= d;
  }
  return n;
}

void refuse_external(const onnx::TensorProto& t, const std::string& what) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL || t.external_data_size() > 0)
    throw InputError(what + " keeps its data in an external file; nudge reads self-contained ONNX files only "
                            "(save with onnx.save(model, path, save_as_external_data=False))");
}

}  // namespace

std::string ints_to_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

Tensor decode_float_tensor(const onnx::TensorProto& t, const std::string& what) {
  refuse_external(t, what);
  if (t.data_type() != onnx::TensorProto::FLOAT)
    throw InputError(what + " has data type " + std::to_string(t.data_type()) + "; nudge reads float32 weights only");
  const int64_t n = checked_count(t, kMaxParamElements, what);
  Tensor out(std::vector<int64_t>(t.dims().begin(), t.dims().end()));
  if (t.has_raw_data()) {
    if (t.raw_data().size() != static_cast<uint64_t>(n) * 4)
      throw InputError(what + " holds " + std::to_string(t.raw_data().size()) + " bytes; its dims " +
                       ints_to_string(out.shape) + " need " + std::to_string(n * 4));
    // ONNX's raw_data is little-endian, as is every machine nudge runs on.
    if (n) std::memcpy(out.data.data(), t.raw_data().data(), static_cast<size_t>(n) * 4);
  } else {
    if (t.float_data_size() != n)
      throw InputError(what + " holds " + std::to_string(t.float_data_size()) + " values; its dims " +
                       ints_to_string(out.shape) + " need " + std::to_string(n));
    for (int64_t i = 0; i < n; ++i) out.data[static_cast<size_t>(i)] = t.float_data(static_cast<int>(i));
  }
  return out;
}

std::vector<int64_t> decode_int_tensor(const onnx::TensorProto& t, const std::string& what) {
  refuse_external(t, what);
  const int64_t n = checked_count(t, 64, what);
  std::vector<int64_t> v(static_cast<size_t>(n));
  if (t.data_type() == onnx::TensorProto::INT64) {
    if (t.has_raw_data()) {
      if (t.raw_data().size() != static_cast<uint64_t>(n) * 8)
        throw InputError(what + " holds " + std::to_string(t.raw_data().size()) + " bytes for " + std::to_string(n) +
                         " int64 values");
      if (n) std::memcpy(v.data(), t.raw_data().data(), static_cast<size_t>(n) * 8);
    } else {
      if (t.int64_data_size() != n) throw InputError(what + " holds the wrong number of int64 values");
      for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = t.int64_data(static_cast<int>(i));
    }
  } else if (t.data_type() == onnx::TensorProto::INT32) {
    if (t.has_raw_data()) {
      if (t.raw_data().size() != static_cast<uint64_t>(n) * 4)
        throw InputError(what + " holds " + std::to_string(t.raw_data().size()) + " bytes for " + std::to_string(n) +
                         " int32 values");
      for (int64_t i = 0; i < n; ++i) {
        int32_t x;
        std::memcpy(&x, t.raw_data().data() + 4 * i, 4);
        v[static_cast<size_t>(i)] = x;
      }
    } else {
      if (t.int32_data_size() != n) throw InputError(what + " holds the wrong number of int32 values");
      for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = t.int32_data(static_cast<int>(i));
    }
  } else {
    throw InputError(what + " has data type " + std::to_string(t.data_type()) + " where integers are expected");
  }
  return v;
}

const onnx::AttributeProto* find_attribute(const onnx::NodeProto& node, const std::string& name) {
  for (const auto& a : node.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

int64_t int_attribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback, const std::string& who) {
  const auto* a = find_attribute(node, name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::INT) throw InputError(who + ": attribute '" + name + "' is not an integer");
  return a->i();
}

float float_attribute(const onnx::NodeProto& node, const std::string& name, float fallback, const std::string& who) {
  const auto* a = find_attribute(node, name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::FLOAT) throw InputError(who + ": attribute '" + name + "' is not a float");
  return a->f();
}

std::string string_attribute(const onnx::NodeProto& node, const std::string& name, const std::string& fallback,
                             const std::string& who) {
  const auto* a = find_attribute(node, name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::STRING) throw InputError(who + ": attribute '" + name + "' is not a string");
  return a->s();
}

std::vector<int64_t> ints_attribute(const onnx::NodeProto& node, const std::string& name, const std::string& who,
                                    bool* present) {
  const auto* a = find_attribute(node, name);
  if (present) *present = a != nullptr;
  if (!a) return {};
  if (a->type() != onnx::AttributeProto::INTS) throw InputError(who + ": attribute '" + name + "' is not a list of integers");
  if (a->ints_size() > 16) throw InputError(who + ": attribute '" + name + "' has " + std::to_string(a->ints_size()) + " entries");
  return {a->ints().begin(), a->ints().end()};
}

}  // namespace nudge::onnx_io
