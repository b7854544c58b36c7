// Synthetic images that are not digits, for a model with a "not a digit" class (nudge train --open-set) and for
// measuring how often a model calls such images a digit (nudge eval --nondigits). Every image is a pure function of
// (family, seed, index) through the counter generator, so a training run and an evaluation are reproducible.
//
// Families (all but blocks and noise are what --open-set trains on by default; blocks is kept for testing
// generalisation to a family never seen in training, as are Fashion-MNIST's images, which are read from their IDX
// files):
//   uniform   U[m - c/2, m + c/2] per pixel, mean m ~ U[0,1] and contrast c ~ {0.25, 0.5, 1}, clamped to [0,1]
//             (c = 1, m = 0.5 is the notebook's uniform noise)
//   gauss     N(m, s^2) per pixel, m ~ U[0,1], s ~ {0.1, 0.3, 0.5}, clamped
//   constant  one value v ~ U[0,1] everywhere
//   shuffled  a training digit with its pixels permuted: a digit's ink, no digit's shape
//   patches   a training digit cut into a 4x4 grid of 7x7 patches, the patches permuted: a digit's strokes, no
//             digit's arrangement
//   shapes    1 to 4 filled ellipses or rectangles (centres anywhere, radii 3..12 px; 30% with a hole) of gray
//             0.3..1, lit by a linear ramp, with a random texture, on black: large filled silhouettes, which digits
//             are not
//   blocks    low-frequency noise: a 7x7 grid of U[0,1] values, each over a 4x4 block (28x28 images)
//   noise     U[0,1] per pixel: exactly nudge optimize's --init noise start images (image `index` of seed `seed`),
//             the reference notebook's noise; a member of the uniform family's distribution (c = 1, m = 0.5)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.h"

namespace nudge {

enum class NonDigitFamily { Uniform, Gauss, Constant, Shuffled, Blocks, Noise, Patches, Shapes };

// "uniform" -> Uniform; InputError naming the known families otherwise.
NonDigitFamily parse_nondigit_family(const std::string& name);
std::string to_string(NonDigitFamily f);
// "uniform,gauss" -> both; InputError for an empty list or an unknown name.
std::vector<NonDigitFamily> parse_nondigit_families(const std::string& list);
// The families --open-set trains on unless told otherwise.
std::vector<NonDigitFamily> default_training_families();

// Writes image `index` of `family` (H*W floats in [0,1]) to out. `digits` supplies the shuffled family's digits (its
// training split); the others ignore it.
void make_nondigit(NonDigitFamily family, uint64_t seed, uint64_t index, const Dataset& digits, float* out);

// The name of the open-set class (in the model's kClassesKey metadata, model.h).
constexpr const char* kNotADigit = "not a digit";

}  // namespace nudge
