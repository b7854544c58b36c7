// The live list of a device-resident attack run (cuda_apgd.cpp, cuda_square.cpp): the rows still searching, compacted
// on the card after an iteration, its length copied to pinned memory behind an event and read by the host only when
// the run's loop asks for it, `lag` iterations later (host/core/apgd_run.h, square_run.h). Never adopted before that,
// even when the event has completed: the network's batch sizes follow the list's length, and cuDNN and cuBLAS may
// compute other bits at other sizes, so an early adoption would make results depend on the host's timing.
#pragma once
#include <cstdint>

#include "cuda_event.h"
#include "device_memory.h"

namespace nudge::cuda {

class LaggedLiveList {
 public:
  // m rows at most; the buffers come from `pool` and are named after `what` ("apgd", "square").
  LaggedLiveList(int m, const char* what, ReusePool& pool);

  // Every entry, in order. From pageable memory: the host array has been read when this returns, and the copy is
  // ordered before the run's later work on the same stream.
  void reset(cudaStream_t s);
  // Queues the compaction of the first `count` rows by keep() and the copy of its length to the host.
  void compact(int count, cudaStream_t s);
  // Waits for the last compaction's length (the loop calls this at the lag only; see above).
  void wait();
  // The compacted list becomes the live one; returns its length. Only after wait() for the last compact()
  // (InternalError otherwise: the pinned length would be stale).
  int adopt();

  const int32_t* list() const { return list_.get(); }
  uint8_t* keep() const { return keep_.get(); }

 private:
  int m_;
  const char* what_;
  DeviceBuffer<int32_t> list_, next_, count_dev_;
  DeviceBuffer<uint8_t> keep_;  // by row of the list, written by the run's last kernel of an iteration
  // Its own pinned slot, not the context's readback slot: the length is read iterations after it was queued, and
  // other work on the context may use that slot meanwhile.
  PinnedBuffer<int32_t> count_host_;
  CudaEvent compacted_;
  bool waited_ = false;  // wait() has returned since the last compact()
};

}  // namespace nudge::cuda
