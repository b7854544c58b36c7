// Comparisons of attack outcomes (AttackRecord, attacks.h) for the attack suites: two runs that must agree bit for
// bit (the loops over the host devices against the CPU attacks, tests/test_apgd_run.cpp and test_square_run.cpp),
// and the re-check of a run's adversarial examples by a fresh forward pass (the GPU runs, test_cuda_attack_runs.cpp).
#pragma once
#include <gtest/gtest.h>

#include <vector>

#include "attacks.h"
#include "backend.h"

namespace nudge::testing_support {

// 0 .. n-1, the `todo` of an attack on every entry.
std::vector<int> all_entries(int n);
int count_broken(const AttackRecord& r);

// The same entries broken, by the same attack, restart and step, with the same adversarial bits.
::testing::AssertionResult same_record(const AttackRecord& a, const AttackRecord& b);

// Every broken entry of `r`: its example in [0, 1], within eps of the clean point in the set's norm (relative slack
// `slack` for the rounding of a projection), and misclassified by a fresh forward pass through `backend`.
::testing::AssertionResult examples_recheck(Backend& backend, const AttackSet& set, const AttackRecord& r,
                                            double slack);

}  // namespace nudge::testing_support
