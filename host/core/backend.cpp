#include "backend.h"

namespace nudge {

OptimizePath parse_optimize_path(const std::string& s) {
  if (s == "auto") return OptimizePath::Auto;
  if (s == "fused") return OptimizePath::Fused;
  if (s == "layers") return OptimizePath::Layers;
  throw InputError("unknown --path '" + s + "' (expected auto, fused or layers)");
}

}  // namespace nudge
