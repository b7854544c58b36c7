// When a device-resident attack run's loop (drive_apgd, drive_fab, drive_square) queues a compaction of its live
// list and when it adopts one: after an iteration when none is pending, and exactly `lag` iterations after it was
// queued (earlier only if the device says it is ready, which the host devices never do before the lag and the CUDA
// devices never do at all: host/cuda/lagged_live_list.h says why). Written once so the three loops cannot drift.
#pragma once

namespace nudge {

template <class Device>
class CompactionSchedule {
 public:
  explicit CompactionSchedule(Device& dev) : dev_(dev), lag_(dev.compaction_lag()) {}

  // Before iteration `it` (numbered as the loop numbers what it queues): adopts the pending compaction if it is
  // due, setting *count to the new list's length.
  void before(int it, int* count) {
    if (pending_ && dev_.compaction_ready(it - 1 - queued_after_ >= lag_)) {
      *count = dev_.adopt_compaction();
      pending_ = false;
    }
  }

  // After iteration `it` over `count` rows: queues a compaction if none is pending.
  void after(int it, int count) {
    if (pending_) return;
    dev_.compact(count);
    pending_ = true;
    queued_after_ = it;
  }

 private:
  Device& dev_;
  int lag_;
  bool pending_ = false;
  int queued_after_ = 0;  // the iteration whose results the pending compaction follows
};

}  // namespace nudge
