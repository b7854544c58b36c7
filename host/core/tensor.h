// A plain host tensor: a shape and a flat float buffer in row-major order.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nudge {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(element_count(shape), 0.0f) {}

  static size_t element_count(const std::vector<int64_t>& s) {
    size_t n = 1;
    for (int64_t d : s) n *= static_cast<size_t>(d);
    return n;
  }
  size_t size() const { return data.size(); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

// "[24,1,3,3]" for messages.
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace nudge
