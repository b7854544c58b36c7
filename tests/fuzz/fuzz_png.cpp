// Fuzzes PNG decoding through libpng into [0,1] grayscale, with and without a wanted size (the model's).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "errors.h"
#include "image_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  for (const nudge::ImageSize want : {nudge::ImageSize{}, nudge::ImageSize{28, 28}}) {
    try {
      const nudge::GrayImage img = nudge::parse_png(bytes, "fuzz", want);
      if (img.pixels.size() != static_cast<size_t>(img.width) * img.height) __builtin_trap();
      for (float p : img.pixels)
        if (!(p >= 0.0f && p <= 1.0f)) __builtin_trap();
    } catch (const nudge::InputError&) {
    }
  }
  return 0;
}
