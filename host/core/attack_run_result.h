// What a device-resident attack run (apgd_run.h, square_run.h) hands back, from its entries' final states, and what
// it cost by the attack's own count.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace nudge {

struct AttackRunResult {
  std::vector<uint8_t> broken;  // [m]
  std::vector<int32_t> step;    // [m] the step (APGD) or query (Square) that broke it, -1 while robust
  std::vector<float> adv;       // [m, D] meaningful where broken

  // The passes the attack spent by its own count, the figure summary.json reports: an entry broken at step s took
  // s + 1 (the start's included), a robust one `full`. The rows a lagging list carried after they broke (up to the
  // lag per broken entry, computed and discarded) are left out, so every backend and lag reports the same figure.
  long cost(long full) const {
    long c = 0;
    for (size_t e = 0; e < broken.size(); ++e) c += broken[e] ? step[e] + 1L : full;
    return c;
  }
};

// The result of entries whose states have `done` and `broken_step` (ApgdEntry, SquareEntry), with their images.
template <class Entry>
AttackRunResult attack_run_result(const std::vector<Entry>& entries, std::vector<float> adv) {
  AttackRunResult r;
  r.broken.resize(entries.size());
  r.step.resize(entries.size());
  for (size_t e = 0; e < entries.size(); ++e) {
    r.broken[e] = entries[e].done ? 1 : 0;
    r.step[e] = entries[e].done ? entries[e].broken_step : -1;
  }
  r.adv = std::move(adv);
  return r;
}

}  // namespace nudge
