#include "apgd_run.h"

#include "compaction_schedule.h"

#include <algorithm>
#include <cmath>

namespace nudge {

std::vector<int> apgd_checkpoints(int N) {
  std::vector<int> at;
  // The real-valued recurrence, then w_j = ceil(p_j N); the 1e-9 keeps 0.41 * 100 = 41.000000000000007 at 41.
  double prev = 0, p = 0.22;
  while (p <= 1.0) {
    const int w = std::max(1, static_cast<int>(std::ceil(p * N - 1e-9)));
    if (w > N) break;
    if (at.empty() || w > at.back()) at.push_back(w);
    const double next = p + std::max(p - prev - 0.03, 0.06);
    prev = p;
    p = next;
  }
  return at;
}

ApgdRunCost drive_apgd(ApgdDevice& dev, int m, int iterations, double momentum, double rho,
                       const std::function<void(int)>& on_iteration) {
  ApgdRunCost cost;
  const std::vector<int> checkpoints = apgd_checkpoints(iterations);
  CompactionSchedule<ApgdDevice> compaction(dev);
  dev.start();
  int count = m;
  dev.evaluate(count);
  cost.image_steps += count;
  ApgdTrackStep t;
  t.rho = rho;
  dev.track(count, t);
  compaction.after(0, count);
  size_t next_check = 0;
  int since_check = 0;
  for (int i = 0; i < iterations; ++i) {
    compaction.before(i + 1, &count);
    if (count == 0) break;
    dev.step(count, i == 0 ? 1.0f : static_cast<float>(momentum));
    dev.evaluate(count);
    cost.image_steps += count;
    ++since_check;
    t.iteration = i + 1;
    t.checkpoint = next_check < checkpoints.size() && i + 1 == checkpoints[next_check];
    t.since_check = since_check;
    dev.track(count, t);
    if (t.checkpoint) {
      ++next_check;
      since_check = 0;
    }
    cost.iterations = i + 1;
    if (on_iteration) on_iteration(i + 1);
    compaction.after(i + 1, count);
  }
  return cost;
}

}  // namespace nudge
