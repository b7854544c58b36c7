#include "lagged_live_list.h"

#include <cuda_runtime_api.h>

#include <string>
#include <utility>
#include <vector>

#include "compact_active.cuh"
#include "cuda_check.h"
#include "errors.h"

namespace nudge::cuda {

LaggedLiveList::LaggedLiveList(int m, const char* what, ReusePool& pool)
    : m_(m),
      what_(what),
      list_(static_cast<size_t>(m), "live list", pool),
      next_(static_cast<size_t>(m), "compacted live list", pool),
      count_dev_(1, "compacted list length", pool),
      keep_(static_cast<size_t>(m), "keep flags", pool),
      count_host_(1, "compacted list length (host)") {}

void LaggedLiveList::reset(cudaStream_t s) {
  std::vector<int32_t> identity(m_);
  for (int e = 0; e < m_; ++e) identity[e] = e;
  CUDA_CHECK(cudaMemcpyAsync(list_.get(), identity.data(), identity.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                             s));
}

void LaggedLiveList::compact(int count, cudaStream_t s) {
  compact_active_cuda(list_.get(), keep_.get(), count, next_.get(), count_dev_.get(), s);
  CUDA_CHECK(cudaMemcpyAsync(count_host_.get(), count_dev_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaEventRecord(compacted_.get(), s));
  waited_ = false;
}

void LaggedLiveList::wait() {
  CUDA_CHECK(cudaEventSynchronize(compacted_.get()));
  waited_ = true;
}

int LaggedLiveList::adopt() {
  if (!waited_) throw InternalError(std::string(what_) + ": a compaction adopted before its length arrived");
  waited_ = false;
  // Later launches read next_ (queued after the compaction that wrote it); list_ becomes the next compaction's
  // output, written only by work queued after everything that still reads it.
  std::swap(list_, next_);
  const int n = *count_host_.get();
  if (n < 0 || n > m_) throw InternalError(std::string(what_) + ": compacted list of " + std::to_string(n) + " rows");
  return n;
}

}  // namespace nudge::cuda
