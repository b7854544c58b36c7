// Learning-rate and eps schedules of training, as functions of training progress t in epochs (fractional: batch b
// of B in epoch e, counted from 0, is at t = e + (b + 1) / B), so they are the same whatever the batch size.
#pragma once
#include <string>

namespace nudge {

enum class LrSchedule {
  Constant,  // lr throughout
  Step,      // lr, then lr/10 from half the epochs and lr/100 from three quarters of them
  Cyclic     // one triangle: 0 -> lr at 2/5 of the epochs -> 0 at the end (Smith; Wong et al. 2020's Fast-AT)
};
LrSchedule parse_lr_schedule(const std::string& s);  // "constant" | "step" | "cyclic"; InputError otherwise
const char* to_string(LrSchedule s);

float learning_rate_at(LrSchedule schedule, float lr, double t, int epochs);

// eps grows linearly from 0 to `eps` over the first `ramp_epochs` epochs (0: the full eps from the start).
float eps_at(float eps, double t, double ramp_epochs);

}  // namespace nudge
