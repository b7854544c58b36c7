// Fuzzes architecture strings: a string that parses must print back to itself, and its parameter shapes must stay
// inside the caps the parser promises.
#include <cstddef>
#include <cstdint>
#include <string>

#include "architecture.h"
#include "errors.h"
#include "tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const nudge::Architecture a = nudge::Architecture::parse(text);
    if (nudge::Architecture::parse(a.to_string()).to_string() != a.to_string()) __builtin_trap();
    for (const nudge::LayerSpec& l : a.layers)
      if (l.out.size() > nudge::kMaxLayerElements || l.out.size() < 1) __builtin_trap();
    for (const nudge::ParamSpec& p : a.params())
      if (nudge::Tensor::element_count(p.shape) > static_cast<size_t>(nudge::kMaxParamElements)) __builtin_trap();
    a.param_count();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
