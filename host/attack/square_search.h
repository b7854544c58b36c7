// The random search both versions of Square share (Andriushchenko et al., ECCV 2020): every entry starts from an
// image its norm's proposal draws, then each iteration tries one candidate per entry still robust and keeps it when
// the margin z_y - max_{i != y} z_i falls; an entry leaves as soon as its margin is negative. The norms differ only
// in the start and the proposal (attack_square.cpp for L-inf, attack_square_l2.cpp for L2). Internal to the attack
// library.
#pragma once
#include <algorithm>
#include <functional>
#include <memory>
#include <vector>

#include "attacks.h"
#include "square_rows.h"  // square_corner

namespace nudge {

struct SquareProposal {
  // Writes entry e's starting image (D floats, inside its ball and [0,1]) into x.
  std::function<void(int e, float* x)> start;
  // Writes iteration it's candidate for entry e into cand, from the entry's best image so far. Both functions are
  // functions of their arguments alone: calls for several entries run at once, on several threads.
  std::function<void(int e, int it, const float* best, float* cand)> propose;
};

// Runs cfg.queries forward passes per entry (fewer for an entry that breaks) and records the broken ones in rec as
// Square's, restart `restart`. Returns the queries spent.
long square_search(Backend& backend, const AttackSet& set, const std::vector<int>& entries, const SquareConfig& cfg,
                   int restart, AttackRecord& rec, const SquareProposal& proposal,
                   const std::function<void(double)>& tick);

// L2 (attack_square_l2.cpp): the proposal of the paper's Algorithm 3 for H x W single-channel images.
// patterns: square_l2_pattern_table(min(H, W) - 1), shared with the proposal's calls.
SquareProposal square_l2_proposal(const AttackSet& set, const SquareConfig& cfg, int H, int W, uint64_t seed,
                                  int restart, std::shared_ptr<const std::vector<double>> patterns);

}  // namespace nudge
