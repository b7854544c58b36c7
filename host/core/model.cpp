#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "atomic_file.h"
#include "counter_rng.h"
#include "errors.h"
#include "safetensors.h"

namespace nudge {

namespace {
constexpr const char* kArchKey = "nudge.architecture";
}

Model Model::glorot(const Architecture& arch, uint64_t seed) {
  Model m;
  m.arch = arch;
  const auto specs = arch.params();
  for (size_t p = 0; p < specs.size(); ++p) {
    Tensor t(specs[p].shape);
    if (specs[p].init == ParamInit::One) {
      std::fill(t.data.begin(), t.data.end(), 1.0f);
    } else if (specs[p].init == ParamInit::Glorot) {
      // Keras' glorot_uniform: fan_in = in*kh*kw, fan_out = out*kh*kw.
      const int64_t receptive = specs[p].shape.size() == 4 ? specs[p].shape[2] * specs[p].shape[3] : 1;
      const double fan_in = static_cast<double>(specs[p].shape[1] * receptive);
      const double fan_out = static_cast<double>(specs[p].shape[0] * receptive);
      const float limit = static_cast<float>(std::sqrt(6.0 / (fan_in + fan_out)));
      for (size_t i = 0; i < t.size(); ++i)
        t.data[i] = limit * (2.0f * counter_uniform(seed, kStreamInit, p, static_cast<uint32_t>(i)) - 1.0f);
    }
    m.params.push_back(std::move(t));
  }
  return m;
}

Model Model::load(const std::string& path) { return from_safetensors(read_safetensors(path), path); }

Model Model::from_safetensors(SafetensorsFile f, const std::string& path) {
  Model m;
  auto it = f.metadata.find(kArchKey);
  try {
    m.arch = it == f.metadata.end() ? Architecture::reference() : Architecture::parse(it->second);
  } catch (const InputError& e) {
    throw InputError(path + ": " + e.what());
  }
  for (const ParamSpec& spec : m.arch.params()) {
    auto t = std::find_if(f.tensors.begin(), f.tensors.end(), [&](const auto& nt) { return nt.first == spec.name; });
    if (t == f.tensors.end())
      throw InputError(path + ": tensor " + spec.name + " is missing (architecture " + m.arch.to_string() + ")");
    if (t->second.shape != spec.shape)
      throw InputError(path + ": tensor " + spec.name + " has shape " + shape_to_string(t->second.shape) +
                       ", the architecture needs " + shape_to_string(spec.shape));
    for (float v : t->second.data) {
      if (!std::isfinite(v)) throw InputError(path + ": tensor " + spec.name + " holds a NaN or infinity");
      if (std::fabs(v) > kMaxWeightMagnitude) {
        char value[64];
        std::snprintf(value, sizeof value, "%g, beyond the +-%g", v, kMaxWeightMagnitude);
        throw InputError(path + ": tensor " + spec.name + " holds " + value + " nudge accepts (its outputs would overflow)");
      }
      // A variance below zero has no square root to normalise by (and cannot come from a batch).
      if (spec.is_buffer && v < 0 && spec.name.size() > 12 && spec.name.compare(spec.name.size() - 12, 12, ".running_var") == 0)
        throw InputError(path + ": tensor " + spec.name + " holds a negative variance");
    }
    m.params.push_back(std::move(t->second));
  }
  m.metadata = f.metadata;
  if (f.tensors.size() != m.params.size()) {
    for (const auto& nt : f.tensors) {
      bool known = false;
      for (const ParamSpec& spec : m.arch.params()) known |= spec.name == nt.first;
      if (!known) throw InputError(path + ": unexpected tensor " + nt.first + " for architecture " + m.arch.to_string());
    }
  }
  return m;
}

std::string Model::serialize(const std::map<std::string, std::string>& extra_metadata) const {
  SafetensorsFile f;
  f.metadata = extra_metadata;
  f.metadata[kArchKey] = arch.to_string();
  f.metadata["format"] = "pt";
  const auto specs = arch.params();
  for (size_t i = 0; i < specs.size(); ++i) f.tensors.emplace_back(specs[i].name, params[i]);
  return serialize_safetensors(f);
}

void Model::save(const std::string& path, const std::map<std::string, std::string>& extra_metadata) const {
  write_file_atomically(path, serialize(extra_metadata));
}

std::vector<std::string> class_names(const Model& model) {
  const int K = model.arch.num_classes();
  std::vector<std::string> names;
  if (auto it = model.metadata.find(kClassesKey); it != model.metadata.end()) {
    std::string item;
    for (char c : it->second + ",") {
      if (c == ',') {
        names.push_back(item);
        item.clear();
      } else {
        item += c;
      }
    }
  }
  if (static_cast<int>(names.size()) != K) {
    names.clear();
    for (int k = 0; k < K; ++k) names.push_back(std::to_string(k));
  }
  return names;
}

void assert_params_match_architecture(const Model& model, const char* who) {
  const std::vector<ParamSpec> specs = model.arch.params();
  if (model.params.size() != specs.size())
    throw InternalError(std::string(who) + ": model has " + std::to_string(model.params.size()) +
                        " tensors; its architecture needs " + std::to_string(specs.size()));
  for (size_t i = 0; i < specs.size(); ++i)
    if (model.params[i].shape != specs[i].shape)
      throw InternalError(std::string(who) + ": tensor " + specs[i].name + " has shape " +
                          shape_to_string(model.params[i].shape) + ", the architecture needs " +
                          shape_to_string(specs[i].shape));
}

}  // namespace nudge
