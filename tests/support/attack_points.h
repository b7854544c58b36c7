// The first MNIST test images as attack entries, for the attack suites (tests/test_attacks.cpp,
// tests/test_square_l2.cpp): the images as floats in [0,1] with their labels, and an AttackSet whose entry i is
// point i at one radius.
#pragma once
#include <cstdint>
#include <vector>

#include "attacks.h"
#include "backend.h"

namespace nudge::testing_support {

struct Points {
  std::vector<float> x;     // [n, 784]
  std::vector<int32_t> y;   // [n]
};

// The first n images of the MNIST test split (needs REQUIRE_MNIST()).
Points first_test_points(int n);

// Entries 0..n-1: point i of `p` with its label, at radius eps in `norm`, keyed i; 28x28 images, 10 classes.
AttackSet attack_set(const Points& p, int n, float eps, Norm norm = Norm::Linf);

// set.ranked from the clean logits of `backend`'s model, as the cascade ranks them (APGD-T's and FAB-T's targets).
void rank_by_clean_logits(Backend& backend, AttackSet& set);

// Every entry's first target (ranked_target of rank 0; set.ranked filled), and a FAB-T run of every entry of the set
// toward `target` (pointers into set and target, which must outlive it).
std::vector<int32_t> first_targets(const AttackSet& set);
FabRunInput fab_input(const AttackSet& set, const std::vector<int32_t>& target);

}  // namespace nudge::testing_support
