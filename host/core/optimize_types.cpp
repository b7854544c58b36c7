#include "optimize_types.h"

#include "errors.h"

namespace nudge {

LossKind parse_loss(const std::string& s) {
  if (s == "ce") return LossKind::CrossEntropy;
  if (s == "kl") return LossKind::KL;
  if (s == "cw") return LossKind::CarliniWagner;
  throw InputError("unknown loss '" + s + "' (expected ce, kl or cw)");
}

InputOptimizer parse_optimizer(const std::string& s) {
  if (s == "adam") return InputOptimizer::Adam;
  if (s == "sgd") return InputOptimizer::Sgd;
  if (s == "sign") return InputOptimizer::Sign;
  throw InputError("unknown optimizer '" + s + "' (expected adam, sgd or sign)");
}

Norm parse_norm(const std::string& s) {
  if (s == "linf") return Norm::Linf;
  if (s == "l2") return Norm::L2;
  throw InputError("unknown norm '" + s + "' (expected linf or l2)");
}

const char* to_string(LossKind k) {
  switch (k) {
    case LossKind::CrossEntropy: return "ce";
    case LossKind::KL: return "kl";
    case LossKind::CarliniWagner: return "cw";
  }
  return "?";
}

const char* to_string(InputOptimizer o) {
  switch (o) {
    case InputOptimizer::Adam: return "adam";
    case InputOptimizer::Sgd: return "sgd";
    case InputOptimizer::Sign: return "sign";
  }
  return "?";
}

const char* to_string(Norm n) {
  switch (n) {
    case Norm::None: return "none";
    case Norm::Linf: return "linf";
    case Norm::L2: return "l2";
  }
  return "?";
}

OptimizePath parse_optimize_path(const std::string& s) {
  if (s == "auto") return OptimizePath::Auto;
  if (s == "fused") return OptimizePath::Fused;
  if (s == "layers") return OptimizePath::Layers;
  throw InputError("unknown --path '" + s + "' (expected auto, fused or layers)");
}

}  // namespace nudge
