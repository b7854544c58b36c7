// The vocabulary of input optimization shared by the engine, the backends and the kernels' CPU twins.
#pragma once
#include <cstdint>
#include <string>

namespace nudge {

enum class LossKind : int32_t { CrossEntropy = 0, KL = 1, CarliniWagner = 2 };
enum class InputOptimizer : int32_t { Adam = 0, Sgd = 1, Sign = 2 };
enum class Norm : int32_t { None = 0, Linf = 1, L2 = 2 };

// How an entry's target is judged. OneHot: reach class `target_class`. Soft: match `target_dist`.
// Untargeted: any class but `target_class` (the true label).
enum class TargetKind : int32_t { OneHot = 0, Soft = 1, Untargeted = 2 };

// Which implementation of an optimize chunk runs where a backend has more than one. Auto: the fastest that supports
// the model (CUDA: the fused kernel for the reference architecture, else layer by layer). Fused: that kernel (a job
// asking for it where it cannot run is refused before any compute). Layers: the layer-by-layer network.
enum class OptimizePath : int32_t { Auto = 0, Fused = 1, Layers = 2 };

// Settings shared by every entry of a job.
struct StepConfig {
  LossKind loss = LossKind::CrossEntropy;
  InputOptimizer optimizer = InputOptimizer::Adam;
  float lr = 0.1f;
  float beta1 = 0.9f, beta2 = 0.999f, adam_eps = 1e-7f;
  float cw_kappa = 0.0f;     // Carlini-Wagner confidence margin on the logits
  bool early_stop = false;   // freeze an entry once its goal is met
  // Goals. OneHot: p[target] >= stop_prob, or argmax == target when stop_prob <= 0. Untargeted: argmax != label,
  // and also p[label] <= 1 - stop_prob when stop_prob > 0. Soft: KL(target || p) <= stop_kl.
  float stop_prob = 0.0f;
  float stop_kl = 1e-3f;
  Norm norm = Norm::None;
  OptimizePath path = OptimizePath::Auto;
};

LossKind parse_loss(const std::string& s);             // "ce" | "kl" | "cw"; InputError otherwise
InputOptimizer parse_optimizer(const std::string& s);  // "adam" | "sgd" | "sign"
Norm parse_norm(const std::string& s);                 // "linf" | "l2"
OptimizePath parse_optimize_path(const std::string& s);  // "auto" | "fused" | "layers"
const char* to_string(LossKind k);
const char* to_string(InputOptimizer o);
const char* to_string(Norm n);

}  // namespace nudge
