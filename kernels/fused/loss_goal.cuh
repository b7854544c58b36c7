// The fused kernel's loss, goal test and best-iterate bookkeeping (kernels/fused/fused_optimize.cu), with the loss
// and goal maths of the CPU backend itself (loss_forward_backward_one and goal_met, host/core/optimize_math.h).
#pragma once
#include <cmath>

#include "layout.cuh"
#include "optimize_math.h"

namespace nudge::cuda::fused {

// ---- the bookkeeping phase -----------------------------------------------------------------------------------------
// Loss, goal and best iterate: one thread per image (the CPU twin's order of operations, in double where it is).
// Reads the logits (kScZ); writes probs (kScPR), dz (kScDZ), the entry's best-* state and the image's misc flags
// (improved, stop, the update's step count) that the backward and the update read.
FUSED_HD void track_image(int t, const FusedParams& p, const Smem& s, int ni) {
  if (t >= ni) return;
  float* scratch = s.scratch();
  const int e = s.live_entry()[t];
  const float* tgt = p.target_dist + static_cast<size_t>(e) * kK;
  const TargetKind kind = static_cast<TargetKind>(ldg(p.target_kind + e));
  const int cls = ldg(p.target_class + e);
  // probs and dz in shared memory: the loss indexes them by class, which would put register arrays on the stack.
  float* probs = scratch + kScPR + t * kLogitPitch;
  const float loss = loss_forward_backward_one(scratch + kScZ + t * kLogitPitch, kK, tgt, kind, cls, p.loss, p.kappa,
                                               probs, scratch + kScDZ + t * kLogitPitch);
  const bool met = goal_met(probs, kK, tgt, kind, cls, p.stop_prob, p.stop_kl);
  const int steps = p.steps_done[e];
  if (p.start_class && steps == 0) {
    // The first iterate's class, for the report's "classified before" column: no second network pass for it.
    int best = 0;
    for (int j = 1; j < kK; ++j)
      if (probs[j] > probs[best]) best = j;
    p.start_class[e] = best;
  }
  const bool improved = !p.goal_reached[e] && (met || loss < p.best_loss[e]);
  if (improved) {
    p.best_loss[e] = loss;
    for (int j = 0; j < kK; ++j) p.best_probs[static_cast<size_t>(e) * kK + j] = probs[j];
    if (met) {
      p.goal_reached[e] = 1;
      p.success_step[e] = steps;
    }
  }
  const bool stop = met && p.early_stop;
  if (stop) s.misc[kMsLive + s.misc[kMsLiveSlot + t]] = 0;
  s.misc[kMsImproved + t] = improved ? 1 : 0;
  s.misc[kMsStop + t] = stop ? 1 : 0;
  s.misc[kMsStepT + t] = steps + 1;
}

}  // namespace nudge::cuda::fused
