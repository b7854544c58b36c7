// A model = an architecture plus its parameters, in Architecture::params() order and PyTorch layouts.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "architecture.h"
#include "safetensors.h"
#include "tensor.h"

namespace nudge {

// Weights larger than this are refused on load: a trained network's are below 10, and a few layers of weights near
// FLT_MAX overflow every logit to infinity (predict would print NaN probabilities, optimize write NaN images).
constexpr float kMaxWeightMagnitude = 1e6f;

struct Model {
  Architecture arch;
  std::vector<Tensor> params;  // one per Architecture::params() entry, same order and shape
  // The file's metadata as loaded (e.g. "nudge.recipe", how the model was trained); save() writes its own.
  std::map<std::string, std::string> metadata;

  // Glorot-uniform weights (limit sqrt(6/(fan_in+fan_out)), as Keras), zero biases, batch norms the identity (scale
  // 1, shift 0, running mean 0, running variance 1, as PyTorch); reproducible from `seed`.
  static Model glorot(const Architecture& arch, uint64_t seed);

  // Reads a safetensors file. The architecture comes from the metadata key "nudge.architecture"; a file without it
  // (a PyTorch export) is taken as the reference architecture. Throws InputError naming the file and the problem.
  static Model load(const std::string& path);
  // The same from a parsed file; `what` names it in messages.
  static Model from_safetensors(SafetensorsFile file, const std::string& what);
  // Writes atomically (temp file + rename), F32 little-endian, with the architecture in the metadata.
  void save(const std::string& path, const std::map<std::string, std::string>& extra_metadata = {}) const;
  // The bytes save() writes.
  std::string serialize(const std::map<std::string, std::string>& extra_metadata = {}) const;
};

// The metadata key naming a model's classes ("0,1,...,9,not a digit"); without it class k is called "k".
constexpr const char* kClassesKey = "nudge.classes";
// The K class names of `model` (K = its outputs): the metadata's list when it has K entries, else "0".."K-1".
std::vector<std::string> class_names(const Model& model);

// Asserts Model's invariant (one tensor per Architecture::params() entry, same order and shape), which load(),
// from_safetensors() and glorot() establish: a backend calls it before it trusts the shapes. InternalError, naming
// `who`, when a caller broke it.
void assert_params_match_architecture(const Model& model, const char* who);

}  // namespace nudge
