#include "train_schedule.h"

#include <algorithm>

#include "errors.h"

namespace nudge {

LrSchedule parse_lr_schedule(const std::string& s) {
  if (s == "constant") return LrSchedule::Constant;
  if (s == "step") return LrSchedule::Step;
  if (s == "cyclic") return LrSchedule::Cyclic;
  throw InputError("--lr-schedule must be constant, step or cyclic (got '" + s + "')");
}

const char* to_string(LrSchedule s) {
  switch (s) {
    case LrSchedule::Constant: return "constant";
    case LrSchedule::Step: return "step";
    case LrSchedule::Cyclic: return "cyclic";
  }
  return "?";
}

float learning_rate_at(LrSchedule schedule, float lr, double t, int epochs) {
  const double T = std::max(epochs, 1);
  switch (schedule) {
    case LrSchedule::Constant: return lr;
    case LrSchedule::Step: return t < 0.5 * T ? lr : t < 0.75 * T ? lr * 0.1f : lr * 0.01f;
    case LrSchedule::Cyclic: {
      const double peak = 0.4 * T;
      const double f = t <= peak ? t / peak : (T - t) / (T - peak);
      return static_cast<float>(lr * std::clamp(f, 0.0, 1.0));
    }
  }
  return lr;
}

float eps_at(float eps, double t, double ramp_epochs) {
  if (ramp_epochs <= 0) return eps;
  return static_cast<float>(eps * std::clamp(t / ramp_epochs, 0.0, 1.0));
}

}  // namespace nudge
