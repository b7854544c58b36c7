// The robustness attacks of `nudge robustness` (AutoAttack's four, Croce & Hein 2020, implemented from the papers):
// APGD with the CE or DLR loss, untargeted or targeted (attack_apgd.cpp), and Square, a score-based random search
// (Andriushchenko et al. 2020; attack_square.cpp). They run on any Backend through logit_backprop, on a set of
// entries (a point at one eps), and every random draw is keyed by (seed, attack, restart or target, point, eps,
// step), so an entry's result does not depend on which other entries share its batch, on chunking, on threads or on
// shards.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "apgd_math.h"
#include "apgd_run.h"
#include "backend.h"
#include "optimize_types.h"

namespace nudge {

enum class AttackId : uint32_t { ApgdCe = 1, ApgdT = 2, FabT = 3, Square = 4, ApgdDlr = 5 };
const char* attack_name(AttackId a);  // "apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr"

// The entries an evaluation attacks: point i at radius eps[i].
struct AttackSet {
  int D = 0, K = 0;
  Norm norm = Norm::Linf;
  std::vector<float> x0;         // [n, D] clean images
  std::vector<int32_t> label;    // [n]
  std::vector<float> eps;        // [n]
  std::vector<uint32_t> point;   // [n] the point's index in the job (keys its random draws, with eps)
  std::vector<int32_t> ranked;   // [n, K] classes by the clean logit, largest first (APGD-T's targets)
  int size() const { return static_cast<int>(label.size()); }
};

// What broke an entry: the first adversarial iterate found, misclassified when it was found.
struct AttackRecord {
  std::vector<uint8_t> broken;   // [n]
  std::vector<float> adv;        // [n, D] the adversarial example of broken entries
  std::vector<int32_t> attack;   // [n] AttackId, 0 while robust
  std::vector<int32_t> restart;  // [n] restart (APGD-T, FAB-T: target rank 1..k)
  std::vector<int32_t> step;     // [n] iteration (Square: query) that found it
  void resize(int n, int D);
};

// Told the fraction of an attack's budget done so far (for progress bars); may be empty.
using AttackProgress = std::function<void(double)>;

// A uniform in [0,1) for draw j of `step` of (attack, restart) on the entry keyed by (point, eps). Step and draw
// share the generator's 32-bit block counter, 16 bits each after four draws per block, so step < kMaxAttackSteps and
// j < kMaxAttackDraws (InternalError beyond: two draws would collide); evaluate_robustness refuses configurations that
// would need more.
constexpr uint32_t kMaxAttackSteps = 1u << kAttackDrawStepBits;
constexpr uint32_t kMaxAttackDraws = 1u << kAttackDrawIndexBits;
float attack_uniform(uint64_t seed, AttackId attack, int restart, uint32_t point, float eps, uint32_t step, uint32_t j);

// A point's classes by its clean logits z [K], largest first, ties in class order: a row of AttackSet::ranked.
void rank_classes(const float* z, int K, int32_t* order);

// The target of rank t (0-based) for entry e: the (t+2)-th most likely clean class, skipping the label.
int ranked_target(const AttackSet& set, int e, int t);

// ---- APGD (its maths: apgd_math.h, apgd_rows.h; its loop: apgd_run.h) --------------------------------------------

struct ApgdConfig {
  int iterations = 100;
  int restarts = 1;          // untargeted: restarts; targeted: restarts per target
  int targets = 9;           // targeted: the 2nd..(targets+1)-th most likely clean classes, one after another
  ApgdLoss loss = ApgdLoss::Ce;
  double rho = 0.75;         // a checkpoint halves the step when the loss rose in fewer than rho of its steps
  double momentum = 0.75;    // alpha of the update x + alpha (z - x) + (1 - alpha)(x - x_prev)
  int chunk = 2048;          // entries attacked at once (bounds memory: ~6 images of state each)
};

// Attacks entries `todo` of `set` (those still robust) and records what breaks. Returns image-steps (forward and
// backward passes) spent. An entry stops the moment it is misclassified. Runs on the backend's device when it has
// an APGD run (Backend::begin_apgd), else on the host.
long run_apgd(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const ApgdConfig& cfg,
              AttackId id, uint64_t seed, AttackRecord& rec, const AttackProgress& progress = {});

// ---- FAB-T (L-inf) -------------------------------------------------------------------------------------------------
struct FabConfig {
  int iterations = 100;      // per target
  int targets = 9;           // the 2nd..(targets+1)-th most likely clean classes, one after another
  float alpha_max = 0.1f, eta = 1.05f, beta = 0.9f;
  int chunk = 2048;
};

// The smallest L-inf step d with w.d = c and lo <= d <= hi (the box [0,1] around a point), written to d[D]; returns
// its norm. When the box cannot reach the plane, d goes to the box's limits toward it (the closest the box allows).
float linf_plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d);
// The same with the smallest L2 norm (FAB's L2 version): d_j = clip(mu w_j) for the mu that reaches the plane;
// returns |d|_2.
float l2_plane_box_projection(const float* w, double c, const float* lo, const float* hi, int D, float* d);

// Returns image-steps spent (a forward and backward pass per entry and iteration).
long run_fab_targeted(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const FabConfig& cfg,
                      uint64_t seed, AttackRecord& rec, const AttackProgress& progress = {});

// ---- Square (L-inf and L2) -----------------------------------------------------------------------------------------
struct SquareConfig {
  int queries = 5000;        // forward passes per entry, the initial one included
  double p_init = 0.8;       // fraction of the image the first squares cover
  int restarts = 1;
  int chunk = 4096;
  // The p schedule is the paper's, laid out on 10,000 iterations, whatever the budget: AutoAttack runs it so
  // (resc_schedule=False), and with 5,000 queries its squares end at p_init/128. `rescale` lays it over the query
  // budget instead (the Square paper's rule for other budgets), which ends every run at p_init/512.
  bool rescale = false;
  int schedule_iterations() const { return rescale ? queries : 10000; }
};

// The fraction p of pixels a square covers at iteration `it` (0-based: the first candidate after the start) of a
// schedule of `iterations`: p_init halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, scaled
// to `iterations`.
double square_p(double p_init, int it, int iterations);
// The side of the L-inf square: round(sqrt(p * H * W)), at least 1 and at most min(H, W) - 1.
int square_side(double p, int H, int W);

// The window side of iteration it (1-based; the start is 0) in `norm`: square_side or square_l2_side at square_p of
// it - 1 over the config's schedule.
int square_window_side(Norm norm, const SquareConfig& cfg, int it, int H, int W);
// L2. The side of its window: round(sqrt(p * H * W)), at least 3 and odd (the paper's rule, so that the window's
// two halves each hold a centre row), at most min(H, W) - 1 (so that it has two positions to choose from).
int square_l2_side(double p, int H, int W);
// The smallest image side L2 Square accepts: its start is a grid of bumps of side min(H, W) / 5.
constexpr int kSquareL2MinSide = 5;
// The paper's centred "pseudo-Gaussian" bump on a rows x cols rectangle, unnormalised: the pixel at Chebyshev
// distance d from the centre (rows/2, cols/2) is sum_{k=d}^{M-1} 1/(k+1)^2, M = max(rows/2, cols/2) + 1. Row-major.
std::vector<double> square_bump(int rows, int cols);
// The L2 update's pattern on an s x s window: the bump on the first s/2 rows, minus the bump on the other s - s/2,
// each half scaled to unit L2 norm and then the whole (so each half holds norm 1/sqrt(2)); transposed (halves left
// and right) when `transpose`. Row-major.
std::vector<double> square_l2_pattern(int s, bool transpose);
// Every side's pattern 1 .. max_side in both orientations, laid out as square_pattern_offset (square_l2_rows.h)
// says: the table the L2 rows read, on the host and, uploaded, on the card.
std::vector<double> square_l2_pattern_table(int max_side);

// Returns queries (forward passes) spent. H x W single-channel images.
long run_square(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const SquareConfig& cfg,
                int H, int W, uint64_t seed, AttackRecord& rec, const AttackProgress& progress = {});

}  // namespace nudge
