#include "square_run.h"

namespace nudge {

long drive_square(SquareDevice& dev, int m, int queries, const std::function<int(int)>& side,
                  const std::function<void(int)>& on_iteration) {
  const int lag = dev.compaction_lag();
  dev.start();
  dev.evaluate(m, 0);
  long spent = m;
  int count = m;
  dev.compact(count);
  bool pending = true;
  int compacted_after = 0;
  for (int it = 1; it < queries; ++it) {
    if (pending && dev.compaction_ready(it - 1 - compacted_after >= lag)) {
      count = dev.adopt_compaction();
      pending = false;
    }
    if (count == 0) break;
    dev.propose(count, it, side(it));
    dev.evaluate(count, it);
    spent += count;
    if (on_iteration) on_iteration(it);
    if (!pending) {
      dev.compact(count);
      pending = true;
      compacted_after = it;
    }
  }
  return spent;
}

}  // namespace nudge
