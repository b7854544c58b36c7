// APGD's maths (Croce & Hein, ICML 2020), written once for the CPU run and the CUDA kernels (kernels/apgd.cu): the
// keyed draws of the random start, the per-entry losses, the step-size rule at checkpoints and the bookkeeping of
// one entry after an evaluation. The per-pixel work, which needs a block's threads, is in apgd_rows.h.
//
// An entry's life, with N iterations and checkpoints w_1 < w_2 < ... (apgd_run.h):
//   iteration 0 (the random start): misclassified -> broken at step 0; else best = start, eta = 2 eps
//   iteration i >= 1, after the step from i - 1: misclassified -> broken at step i; else the best iterate follows
//     the highest loss, `increases` counts the iterations whose loss rose, and at i = w_j the step halves (and the
//     entry goes back to its best iterate and that iterate's gradient) when apgd_halve_step says so.
// An entry's result depends only on its own state and draws, never on the other entries of its run.
//
// Checked by tests/test_attacks.cpp (the rule and the schedule on constructed sequences) and, through the rows and
// the run, tests/test_apgd_run.cpp; on a GPU, tests/test_cuda_kernels_apgd.cpp and tests/test_cuda_attack_runs.cpp.
#pragma once
#include <stdint.h>
#include <string.h>

#include "counter_rng.h"
#include "host_device.h"
#include "optimize_math.h"

namespace nudge {

enum class ApgdLoss : int32_t { Ce, Dlr, DlrTargeted };

// Draw j of `step` of (attack, restart) on the entry keyed by (point, eps), as a uniform in [0, 1). Streams 256 and
// up are the attacks' (counter_rng.h's named streams are all below 256). Step and draw share the block counter, 16
// bits each after four draws per block: callers keep step < 2^16 and j < 2^18 (attacks.h's kMaxAttackSteps and
// kMaxAttackDraws, checked on the host, are these).
constexpr uint32_t kAttackDrawStepBits = 16, kAttackDrawIndexBits = 18;
NUDGE_HD float attack_draw(uint64_t seed, uint32_t attack, int restart, uint32_t point, float eps, uint32_t step,
                           uint32_t j) {
  uint32_t eps_bits;
  memcpy(&eps_bits, &eps, sizeof eps_bits);
  const uint32_t stream = 256u | attack << 8 | static_cast<uint32_t>(restart) << 16;
  const uint64_t index = static_cast<uint64_t>(point) << 32 | eps_bits;
  return uniform_from_bits(counter_random(seed, stream, index, step << kAttackDrawStepBits | (j >> 2)).v[j & 3]);
}

// The loss APGD maximises at logits z (K of them) for label y (target t for the targeted DLR), its logit gradient
// into dz (may be null), and the argmax of z into *pred.
NUDGE_HD float apgd_loss_one(ApgdLoss loss, const float* z, int K, int y, int t, float* dz, int* pred) {
  int top = 0;
  for (int j = 1; j < K; ++j)
    if (z[j] > z[top]) top = j;
  *pred = top;
  switch (loss) {
    case ApgdLoss::Ce: return attack_ce(z, K, y, dz);
    case ApgdLoss::Dlr: return attack_dlr(z, K, y, dz);
    case ApgdLoss::DlrTargeted: return attack_dlr_targeted(z, K, y, t, dz);
  }
  return 0.0f;
}

// The step-size rule at a checkpoint: halve when the loss rose in fewer than rho of the `steps` steps since the last
// checkpoint, or when the step was not halved at the last checkpoint and the best loss has not improved since.
NUDGE_HD bool apgd_halve_step(int increases, int steps, double rho, bool halved_last, float best_loss_last,
                              float best_loss) {
  const bool oscillating = increases < rho * steps;
  const bool stalled = !halved_last && !(best_loss > best_loss_last);
  return oscillating || stalled;
}

// One entry's scalars between iterations (per entry on the device, 32 bytes).
struct ApgdEntry {
  float loss_best;   // the highest loss so far
  float prev;        // the loss of the iterate the next step starts from
  float best_last;   // loss_best at the last checkpoint
  float eta;         // the step size
  int32_t increases; // iterations since the last checkpoint whose loss rose
  int32_t halved_last;
  int32_t done;      // broken: never stepped or tracked again
  int32_t broken_step;
};

// Where the run is when an evaluation is tracked: `iteration` (0 = the start), and whether it is a checkpoint,
// with the iterations since the previous one.
struct ApgdTrackStep {
  int iteration = 0;
  int checkpoint = 0;
  int since_check = 0;
  double rho = 0.75;
};

// What tracking an evaluation does to an entry's pixels.
struct ApgdMoves {
  bool broken = false;   // record x as the adversarial example
  bool keep_best = false;// x and the new gradient become the best iterate
  bool go_best = false;  // halved: x and the gradient the next step uses go back to the best iterate
};

// The entry's state after an evaluation of loss `loss` (misclassified or not) at step t; *moves says what happens to
// its pixels. An entry already done is left as it is (moves all false).
NUDGE_HD ApgdEntry apgd_track_entry(ApgdEntry s, float loss, bool misclassified, float eps, const ApgdTrackStep& t,
                                    ApgdMoves* moves) {
  *moves = ApgdMoves();
  if (s.done) return s;
  if (misclassified) {
    s.done = 1;
    s.broken_step = t.iteration;
    moves->broken = true;
    return s;
  }
  if (t.iteration == 0) {
    s.loss_best = s.prev = s.best_last = loss;
    s.eta = 2.0f * eps;
    s.increases = 0;
    s.halved_last = 0;
    moves->keep_best = true;
    return s;
  }
  if (loss > s.loss_best) {
    s.loss_best = loss;
    moves->keep_best = true;
  }
  s.increases += loss > s.prev;
  s.prev = loss;
  if (!t.checkpoint) return s;
  const bool halve = apgd_halve_step(s.increases, t.since_check, t.rho, s.halved_last != 0, s.best_last, s.loss_best);
  s.halved_last = halve;
  s.best_last = s.loss_best;
  s.increases = 0;
  if (halve) {
    s.eta *= 0.5f;
    s.prev = s.loss_best;
    moves->go_best = true;
  }
  return s;
}

// The momentum update of APGD, x + alpha (z - x) + (1 - alpha)(x - x_prev), before its projection.
NUDGE_HD float apgd_momentum(float x, float z, float x_prev, float alpha) {
  return x + alpha * (z - x) + (1.0f - alpha) * (x - x_prev);
}

}  // namespace nudge
