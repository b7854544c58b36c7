// Adversarial training's inner attacks and its guard. The attacks are nudge's batched input optimization, run on a
// training batch by the same backend that trains:
//   pgd    (Madry et al. 2018): k sign-gradient steps of alpha from a uniform random start in the L-inf eps-ball,
//          ascending the cross-entropy; the strongest iterate (highest loss) is kept.
//   fgsm   (Wong et al. 2020, "Fast is better than free"): the same with one step, alpha = 1.25 eps by default.
//   trades (Zhang et al. 2019): k sign steps ascending KL(p(x) || p(x')) from x + 0.001 N(0,1); the last iterate.
// pgd and fgsm run as an optimize chunk (Backend::begin_optimize: on a GPU the device-resident or fused path), with
// the job `nudge optimize --target untargeted --loss ce --optimizer sign --stop-at 1 --random-start` states: the
// untargeted loss -log(1 - p_y) has the gradient direction of the cross-entropy's ascent, and a goal of p_y <= 0
// is never met, so every entry runs all k steps and reports its lowest-loss iterate.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend.h"

namespace nudge {

enum class AdvMethod { None, Pgd, Fgsm, Trades };
AdvMethod parse_adv_method(const std::string& s);  // "pgd" | "fgsm" | "trades"; InputError otherwise
const char* to_string(AdvMethod m);

struct AdversarialConfig {
  AdvMethod method = AdvMethod::None;
  float eps = 0.3f;          // L-inf radius reached after the ramp
  double eps_ramp_epochs = 0;// eps grows linearly from 0 over these first epochs
  int steps = 10;            // attack steps per batch (fgsm: 1)
  float step_size = 0.04f;   // alpha
  float beta = 6.0f;         // TRADES' weight of the KL term
  bool mix_clean = false;    // pgd/fgsm: train on clean and attacked images, half each
  // The guard: robust accuracy on held-out training images after every epoch, by a stronger multi-step attack.
  int check_count = 500;     // the last check_count images of the training split, never trained on
  int check_steps = 20;      // PGD steps of the check (alpha = 2.5 eps / steps), from a random start
  int check_restarts = 1;
  bool check_apgd = false;   // the check runs APGD-CE (check_steps iterations) instead of PGD: stronger, and it sees
                             // the partial gradient masking that a fixed-step PGD check misses after Fast-AT
  bool guard = true;         // stop and keep the best epoch when the check's robust accuracy collapses
  double collapse_drop = 0.2;// a fall of this much (absolute) below the best epoch's robust accuracy is a collapse
  // From the second epoch on, a model that resists its training attack on this much more of the epoch's batches
  // than held-out images resist the check has overfitted to the training attack (Wong et al. 2020's catastrophic
  // overfitting, which can set in before the check ever saw the model robust, so no fall from a best epoch shows it).
  double overfit_gap = 0.5;
};

// Writes the attacked batch x_adv [n, D] for x [n, D] with labels, at radius eps (the scheduled one), seeded by
// `seed` (every random draw is keyed by (seed, example i)). `scratch` holds buffers reused between batches.
struct AttackScratch {
  std::vector<float> init, dist, eps, probs, loss, grad, clean_probs;
  std::vector<int32_t> kind;
};
void attack_training_batch(Backend& backend, const AdversarialConfig& cfg, float eps, const float* x,
                           const int32_t* labels, int n, int D, int K, uint64_t seed, float* x_adv,
                           AttackScratch& scratch);

// The optimize step configuration of the pgd/fgsm attack (exposed so tests can run the same job through
// `nudge optimize`'s engine).
StepConfig training_attack_step_config(float step_size);

// The seed of batch `batch` of epoch `epoch` (both from 0) for attack_training_batch.
uint64_t training_attack_seed(uint64_t seed, int epoch, int batch);

struct RobustCheck {
  int count = 0, clean_correct = 0, robust = 0;  // robust: classified correctly and no attack restart broke it
  double clean_accuracy() const { return count ? static_cast<double>(clean_correct) / count : 0; }
  double robust_accuracy() const { return count ? static_cast<double>(robust) / count : 0; }
};
// Untargeted L-inf PGD with early stop (an image stops once misclassified): `steps` sign steps of `alpha` from a
// uniform random start (restart r seeded by (seed, r * n + i)); equivalent to `nudge optimize --target untargeted
// --loss ce --optimizer sign --random-start --restarts R`.
RobustCheck pgd_robust_check(Backend& backend, const float* x, const int32_t* labels, int n, int D, int K, float eps,
                             int steps, float alpha, int restarts, uint64_t seed);

// The same with APGD-CE (attacks.h): `iterations` per restart, each restart keyed by (seed, point).
RobustCheck apgd_robust_check(Backend& backend, const float* x, const int32_t* labels, int n, int D, int K, float eps,
                              int iterations, int restarts, uint64_t seed);

// The guard's decision after an epoch, from the check's robust accuracy of every epoch so far (the last is the
// current one) and, optionally, the accuracy on the training attack's images of the same epochs. collapsed: the last
// fell more than `drop` below the best earlier one, which is `best_epoch` (0-based index into the history);
// overfit (also a collapse): from the second epoch on, the last epoch's training-attack accuracy exceeds its robust
// accuracy by more than `gap`.
struct GuardVerdict {
  bool collapsed = false;
  bool overfit = false;
  int best_epoch = -1;
};
GuardVerdict guard_verdict(const std::vector<double>& robust_history, double drop,
                           const std::vector<double>& attack_accuracy = {}, double gap = 1.0);

}  // namespace nudge
