#include "nondigits.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "counter_rng.h"
#include "errors.h"
#include "start_images.h"

namespace nudge {

namespace {

const std::pair<const char*, NonDigitFamily> kNames[] = {{"uniform", NonDigitFamily::Uniform},
                                                         {"gauss", NonDigitFamily::Gauss},
                                                         {"constant", NonDigitFamily::Constant},
                                                         {"shuffled", NonDigitFamily::Shuffled},
                                                         {"blocks", NonDigitFamily::Blocks},
                                                         {"noise", NonDigitFamily::Noise},
                                                         {"patches", NonDigitFamily::Patches},
                                                         {"shapes", NonDigitFamily::Shapes}};

float clamp01(float v) { return std::min(std::max(v, 0.0f), 1.0f); }

// Element e of the image's random sequence; elements 0..7 choose the image's parameters, 8.. its pixels.
float u(uint64_t seed, NonDigitFamily f, uint64_t index, uint32_t e) {
  // The family is folded into the index so that families never share a sequence.
  return counter_uniform(seed, kStreamNonDigit, index * 8 + static_cast<uint64_t>(f), e);
}

}  // namespace

NonDigitFamily parse_nondigit_family(const std::string& name) {
  for (const auto& [n, f] : kNames)
    if (name == n) return f;
  throw InputError("unknown non-digit family '" + name + "' (known: uniform, gauss, constant, shuffled, patches, shapes, blocks, noise)");
}

std::string to_string(NonDigitFamily f) {
  for (const auto& [n, g] : kNames)
    if (f == g) return n;
  return "?";
}

std::vector<NonDigitFamily> parse_nondigit_families(const std::string& list) {
  std::vector<NonDigitFamily> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(parse_nondigit_family(item));
  if (out.empty()) throw InputError("empty list of non-digit families");
  return out;
}

std::vector<NonDigitFamily> default_training_families() {
  return {NonDigitFamily::Uniform, NonDigitFamily::Gauss,   NonDigitFamily::Constant,
          NonDigitFamily::Shuffled, NonDigitFamily::Patches, NonDigitFamily::Shapes};
}

void make_nondigit(NonDigitFamily family, uint64_t seed, uint64_t index, const Dataset& digits, float* out) {
  const int H = digits.rows, W = digits.cols, D = H * W;
  const float m = u(seed, family, index, 0);
  switch (family) {
    case NonDigitFamily::Uniform: {
      static const float kContrast[] = {0.25f, 0.5f, 1.0f};
      const float c = kContrast[std::min(2, static_cast<int>(u(seed, family, index, 1) * 3))];
      for (int i = 0; i < D; ++i) out[i] = clamp01(m + c * (u(seed, family, index, 8 + i) - 0.5f));
      break;
    }
    case NonDigitFamily::Gauss: {
      static const float kSigma[] = {0.1f, 0.3f, 0.5f};
      const float s = kSigma[std::min(2, static_cast<int>(u(seed, family, index, 1) * 3))];
      for (int i = 0; i < D; i += 2) {
        // Box-Muller on two of the image's uniforms; 1 - u keeps the logarithm's argument in (0, 1].
        const float r = std::sqrt(-2.0f * std::log(1.0f - u(seed, family, index, 8 + i)));
        const float a = 6.2831853f * u(seed, family, index, 9 + i);
        out[i] = clamp01(m + s * r * std::cos(a));
        if (i + 1 < D) out[i + 1] = clamp01(m + s * r * std::sin(a));
      }
      break;
    }
    case NonDigitFamily::Constant:
      std::fill(out, out + D, m);
      break;
    case NonDigitFamily::Shuffled: {
      const int n = std::min(digits.count - 1, static_cast<int>(m * digits.count));
      std::vector<float> img(D);
      digits.image_as_float(n, img.data());
      std::vector<int> perm(D);
      std::iota(perm.begin(), perm.end(), 0);
      for (int i = D - 1; i > 0; --i)  // Fisher-Yates
        std::swap(perm[i], perm[std::min(i, static_cast<int>(u(seed, family, index, 8 + i) * (i + 1)))]);
      for (int i = 0; i < D; ++i) out[i] = img[perm[i]];
      break;
    }
    case NonDigitFamily::Patches: {
      const int n = std::min(digits.count - 1, static_cast<int>(m * digits.count));
      std::vector<float> img(D);
      digits.image_as_float(n, img.data());
      const int P = 7, gh = H / P, gw = W / P, G = gh * gw;
      std::vector<int> perm(G);
      std::iota(perm.begin(), perm.end(), 0);
      for (int i = G - 1; i > 0; --i)
        std::swap(perm[i], perm[std::min(i, static_cast<int>(u(seed, family, index, 8 + i) * (i + 1)))]);
      if (std::is_sorted(perm.begin(), perm.end())) std::swap(perm[0], perm[G - 1]);  // never the digit itself
      std::fill(out, out + D, 0.0f);  // rows and columns past the last whole patch stay black
      for (int g = 0; g < G; ++g) {
        const int sy = perm[g] / gw * P, sx = perm[g] % gw * P, dy = g / gw * P, dx = g % gw * P;
        for (int y = 0; y < P; ++y)
          for (int x = 0; x < P; ++x) out[(dy + y) * W + dx + x] = img[(sy + y) * W + sx + x];
      }
      break;
    }
    case NonDigitFamily::Shapes: {
      std::fill(out, out + D, 0.0f);
      const int shapes = 1 + std::min(3, static_cast<int>(u(seed, family, index, 1) * 4));
      const float texture = 0.5f * u(seed, family, index, 2);
      // A linear ramp of brightness across the image (clothes and objects are lit unevenly; digits are not).
      const float gy = u(seed, family, index, 3) - 0.5f, gx = u(seed, family, index, 4) - 0.5f;
      for (int k = 0; k < shapes; ++k) {
        const uint32_t e = 16 + 8 * k;  // each shape's parameters
        const float cy = u(seed, family, index, e) * H, cx = u(seed, family, index, e + 1) * W;
        const float ry = 3 + 9 * u(seed, family, index, e + 2), rx = 3 + 9 * u(seed, family, index, e + 3);
        const bool ellipse = u(seed, family, index, e + 4) < 0.5f;
        const float gray = 0.3f + 0.7f * u(seed, family, index, e + 5);
        // Sometimes a hole of a third to a half of the shape's size (a bag's handle, a sandal's straps).
        const float hole = u(seed, family, index, e + 6) < 0.3f ? 0.33f + 0.17f * u(seed, family, index, e + 7) : 0.0f;
        for (int h = 0; h < H; ++h)
          for (int w = 0; w < W; ++w) {
            const float dy = (h + 0.5f - cy) / ry, dx = (w + 0.5f - cx) / rx;
            const float r = ellipse ? std::sqrt(dy * dy + dx * dx) : std::max(std::fabs(dy), std::fabs(dx));
            if (r <= 1 && r >= hole) {
              const float lit = 1 + gy * (h - H / 2.0f) / H + gx * (w - W / 2.0f) / W;
              out[h * W + w] = clamp01(gray * lit * (1 - texture * u(seed, family, index, 64 + h * W + w)));
            }
          }
      }
      break;
    }
    case NonDigitFamily::Noise:
      noise_image(seed, static_cast<long>(index), D, out);
      break;
    case NonDigitFamily::Blocks: {
      const int B = 4, gw = (W + B - 1) / B;
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) out[h * W + w] = u(seed, family, index, 8 + (h / B) * gw + w / B);
      break;
    }
  }
}

}  // namespace nudge
