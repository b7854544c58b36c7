// Robust accuracy by a cascade of attacks (AutoAttack's protocol, Croce & Hein 2020): the clean prediction first
// (misclassified points are never attacked), then each attack in turn on the entries still robust, where an entry is
// a point at one eps of the sweep; a point is robust at eps only if every attack failed on it there. Every
// adversarial example is re-checked before it is reported.
#pragma once
#include <string>
#include <vector>

#include "attacks.h"
#include "backend.h"

namespace nudge {

struct RobustnessConfig {
  std::vector<float> eps;            // the sweep, each value an independent evaluation
  Norm norm = Norm::Linf;
  std::vector<AttackId> attacks;     // in cascade order
  ApgdConfig apgd_ce;                // loss Ce
  ApgdConfig apgd_t;                 // loss DlrTargeted
  ApgdConfig apgd_dlr;               // loss Dlr
  FabConfig fab_t;
  SquareConfig square;
  uint64_t seed = 0;
  int chunk = 4096;                  // points evaluated at once (memory); results do not depend on it
  bool progress = true;
};

// "standard" -> apgd-ce, apgd-t, fab-t, square; or a comma list of apgd-ce, apgd-t, apgd-dlr, fab-t, square.
std::vector<AttackId> parse_attack_list(const std::string& text);

struct StageStats {
  AttackId attack{};
  std::vector<long> attacked;        // [eps] entries the stage ran on
  std::vector<long> robust_after;    // [eps] points still robust after the stage
  long cost = 0;                     // image-steps (APGD: forward + backward) or queries (Square: forwards)
  double seconds = 0;
};

struct RobustnessResult {
  int points = 0, classes = 0, D = 0;
  std::vector<int32_t> label, clean_pred;  // [points]
  long clean_correct = 0;
  // Per entry (point p, eps index j) at p * eps.size() + j:
  std::vector<uint8_t> robust;
  std::vector<int32_t> attack, restart, step;  // what broke it (attack 0: robust or misclassified when clean)
  std::vector<float> linf, l2;                 // size of the adversarial example (0 when none)
  std::vector<float> images;                   // [entries, D] the adversarial example, or the clean image
  std::vector<StageStats> stages;
  double seconds = 0;
};

// x [n, D] images in [0,1] (H x W, one channel), labels [n]. keys[i] keys point i's random draws (the CLI passes
// the point's index in its dataset), so a point's result is the same whatever job, range, slice or shard evaluates
// it; without keys, point i is keyed i.
RobustnessResult evaluate_robustness(Backend& backend, const float* x, const int32_t* labels, int n, int H, int W,
                                     int K, const RobustnessConfig& cfg, const uint32_t* keys = nullptr);

// Throws InternalError naming the entry and the rule when a reported adversarial example is outside its eps-ball
// (beyond float rounding of the projection, 1e-6 relative), outside [0,1], or classified as its label by a fresh
// forward pass.
void recheck_adversarial(Backend& backend, const AttackSet& set, const AttackRecord& rec);

}  // namespace nudge
