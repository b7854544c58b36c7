// Fuzzes the PCA basis reader (--pca FILE): the safetensors layer, then the basis' own checks (shapes that agree,
// finite values, positive non-increasing variances, unit vectors). A basis that passes must be usable: projecting
// and rebuilding an image stays finite and inside [0, 1]. Anything but an InputError is a bug.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "pca_basis.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const nudge::PcaBasis b = nudge::parse_pca_basis(bytes, "fuzz");
    std::vector<float> c(b.components), x(b.pixels), gc(b.components);
    nudge::pca_sample_image(b, 1, 0, b.components, x.data());
    b.coefficients_of(x.data(), c.data());
    b.image_of(c.data(), x.data());
    b.backward(c.data(), x.data(), gc.data());
    for (float v : x)
      if (!(v >= 0.0f && v <= 1.0f)) __builtin_trap();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
