#include "fab_run.h"

#include "compaction_schedule.h"

namespace nudge {

long drive_fab(FabDevice& dev, int m, int iterations, const FabRunInput& in,
               const std::function<void(int)>& on_iteration) {
  FabStep st;
  st.alpha_max = in.alpha_max;
  st.eta = in.eta;
  st.beta = in.beta;
  st.norm = in.norm;
  dev.start();
  long spent = 0;
  int count = m;
  CompactionSchedule<FabDevice> compaction(dev);
  for (int it = 0; it <= iterations; ++it) {
    compaction.before(it, &count);
    if (count == 0) break;
    st.iteration = it;
    st.need_grad = it < iterations;
    dev.evaluate(count, st.need_grad);
    dev.update(count, st);
    spent += count;
    if (on_iteration) on_iteration(it);
    compaction.after(it, count);
  }
  return spent;
}

}  // namespace nudge
