#include "square_run.h"

#include "compaction_schedule.h"

namespace nudge {

long drive_square(SquareDevice& dev, int m, int queries, const std::function<int(int)>& side,
                  const std::function<void(int)>& on_iteration) {
  CompactionSchedule<SquareDevice> compaction(dev);
  dev.start();
  dev.evaluate(m, 0);
  long spent = m;
  int count = m;
  compaction.after(0, count);
  for (int it = 1; it < queries; ++it) {
    compaction.before(it, &count);
    if (count == 0) break;
    dev.propose(count, it, side(it));
    dev.evaluate(count, it);
    spent += count;
    if (on_iteration) on_iteration(it);
    compaction.after(it, count);
  }
  return spent;
}

}  // namespace nudge
