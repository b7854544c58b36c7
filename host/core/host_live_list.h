// The live list of a host-resident attack run (host/attack/apgd_host_device.cpp, the tests' Square emulation): the
// host twin of the CUDA runs' LaggedLiveList (host/cuda/lagged_live_list.h). A compaction is computed when queued
// and becomes the live list only when the run's loop adopts it, `lag` iterations later, as on the card.
#pragma once
#include <cstdint>
#include <vector>

namespace nudge {

struct HostLiveList {
  std::vector<int> list, next;

  // Every entry of m, in order.
  void reset(int m) {
    list.resize(m);
    for (int e = 0; e < m; ++e) list[e] = e;
  }
  // next = the first `count` rows of the list whose keep flag is set, in order.
  void compact(const uint8_t* keep, int count) {
    next.clear();
    for (int r = 0; r < count; ++r)
      if (keep[r]) next.push_back(list[r]);
  }
  int adopt() {
    list.swap(next);
    return static_cast<int>(list.size());
  }
};

}  // namespace nudge
