#include "input_step.h"

#include <algorithm>
#include <cmath>

namespace nudge {

void project_one(float* x, const float* x0, int D, float eps, Norm norm) {
  if (norm == Norm::Linf) {
    for (int i = 0; i < D; ++i) x[i] = std::min(std::max(x[i], x0[i] - eps), x0[i] + eps);
  } else if (norm == Norm::L2) {
    double s = 0;
    for (int i = 0; i < D; ++i) s += static_cast<double>(x[i] - x0[i]) * (x[i] - x0[i]);
    const double len = std::sqrt(s);
    if (len > eps) {
      const float f = static_cast<float>(eps / len);
      for (int i = 0; i < D; ++i) x[i] = x0[i] + (x[i] - x0[i]) * f;
    }
  }
  for (int i = 0; i < D; ++i) x[i] = std::min(std::max(x[i], 0.0f), 1.0f);
}

void optimizer_update_one(float* x, const float* g, float* m, float* v, int t, int D, const StepConfig& cfg) {
  switch (cfg.optimizer) {
    case InputOptimizer::Adam: {
      const float c1 = 1.0f - std::pow(cfg.beta1, static_cast<float>(t));
      const float c2 = 1.0f - std::pow(cfg.beta2, static_cast<float>(t));
      for (int i = 0; i < D; ++i) {
        m[i] = cfg.beta1 * m[i] + (1.0f - cfg.beta1) * g[i];
        v[i] = cfg.beta2 * v[i] + (1.0f - cfg.beta2) * g[i] * g[i];
        x[i] -= cfg.lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + cfg.adam_eps);
      }
      break;
    }
    case InputOptimizer::Sgd:
      for (int i = 0; i < D; ++i) x[i] -= cfg.lr * g[i];
      break;
    case InputOptimizer::Sign:
      for (int i = 0; i < D; ++i) x[i] -= cfg.lr * static_cast<float>((g[i] > 0) - (g[i] < 0));
      break;
  }
}

void input_update_one(float* x, const float* g, float* m, float* v, int t, const float* x0, int D, float eps,
                      const StepConfig& cfg) {
  optimizer_update_one(x, g, m, v, t, D, cfg);
  project_one(x, x0, D, eps, cfg.norm);
}

}  // namespace nudge
