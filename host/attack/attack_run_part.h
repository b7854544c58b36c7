// The two ends of one device-resident attack run (apgd_run.h, square_run.h) over a chunk `part` of an AttackSet's
// entries: their inputs gathered into contiguous arrays, and what the run broke recorded back at the entries.
// Internal to the attack library (attack_apgd.cpp, attack_square.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "attack_run_result.h"
#include "attacks.h"

namespace nudge {

// Row l is entry part[l]: its clean image [D], radius, label and point.
struct RunPart {
  std::vector<float> x0, eps;
  std::vector<int32_t> label;
  std::vector<uint32_t> point;
};
RunPart gather_run_part(const AttackSet& set, const std::vector<int>& part);

// The broken rows of `res` into rec at their entries, as broken by `id` in restart `restart`.
void record_run(const AttackRunResult& res, const std::vector<int>& part, AttackId id, int restart, int D,
                AttackRecord& rec);

}  // namespace nudge
