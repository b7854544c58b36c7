// The first MNIST test images as attack entries, for the attack suites (tests/test_attacks.cpp,
// tests/test_square_l2.cpp): the images as floats in [0,1] with their labels, and an AttackSet whose entry i is
// point i at one radius.
#pragma once
#include <cstdint>
#include <vector>

#include "attacks.h"

namespace nudge::testing_support {

struct Points {
  std::vector<float> x;     // [n, 784]
  std::vector<int32_t> y;   // [n]
};

// The first n images of the MNIST test split (needs REQUIRE_MNIST()).
Points first_test_points(int n);

// Entries 0..n-1: point i of `p` with its label, at radius eps in `norm`, keyed i; 28x28 images, 10 classes.
AttackSet attack_set(const Points& p, int n, float eps, Norm norm = Norm::Linf);

}  // namespace nudge::testing_support
