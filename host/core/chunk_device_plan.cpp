#include "chunk_device_plan.h"

#include <new>

#include "errors.h"

namespace nudge {

ReusePool::~ReusePool() {
  trim();
  // Blocks still lent out belong to buffers that outlive the pool: a bug, but a destructor must not throw.
}

void* ReusePool::allocate(size_t bytes, const char* what) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = kept_.lower_bound(bytes);
    if (it != kept_.end()) {
      void* p = it->second;
      kept_.erase(it);
      return p;
    }
  }
  void* p = nullptr;
  try {
    p = upstream_.allocate(bytes, what);
  } catch (const std::bad_alloc&) {
    // Kept blocks too small for this request may add up to it: give them back and try once more.
    if (kept_blocks() == 0) throw;
    trim();
    p = upstream_.allocate(bytes, what);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  size_of_[p] = bytes;
  return p;
}

void ReusePool::release(void* p) noexcept {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = size_of_.find(p);
  if (it == size_of_.end()) return;  // not this pool's: nothing sensible to do in a noexcept path
  kept_.emplace(it->second, p);
}

void ReusePool::trim() noexcept {
  std::multimap<size_t, void*> kept;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    kept.swap(kept_);
    for (const auto& b : kept) size_of_.erase(b.second);
  }
  for (const auto& b : kept) upstream_.release(b.second);
}

size_t ReusePool::kept_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return kept_.size();
}

std::vector<ChunkBuffer> chunk_state_buffers(int n, int D, int K, bool adam, bool active_list, bool start_class) {
  if (n <= 0) throw InternalError("chunk_state_buffers: a chunk needs at least one entry");
  const size_t N = static_cast<size_t>(n), nd = N * D, nk = N * K, f = sizeof(float), i = sizeof(int32_t);
  std::vector<ChunkBuffer> b = {{"iterates", nd * f}, {"start images", nd * f}};
  if (adam) {
    b.push_back({"Adam m", nd * f});
    b.push_back({"Adam v", nd * f});
  }
  b.insert(b.end(), {{"targets", nk * f},
                     {"radii", N * f},
                     {"best images", nd * f},
                     {"best probabilities", nk * f},
                     {"best losses", N * f},
                     {"target kinds", N * i},
                     {"target classes", N * i},
                     {"step counts", N * i},
                     {"success steps", N * i},
                     {"goal flags", N}});
  if (active_list)
    b.insert(b.end(), {{"active list", N * i}, {"active list", N * i}, {"active count", i}, {"keep flags", N}});
  if (start_class) b.push_back({"start classes", N * i});
  return b;
}

ChunkUploadBytes chunk_upload_bytes(const ChunkInput& in, int D, int K, bool active_list) {
  const size_t N = static_cast<size_t>(in.n), nd = N * D, nk = N * K;
  ChunkUploadBytes u;
  u.start_images = in.generated.kind == GeneratedStarts::Kind::None ? nd * sizeof(float) : 0;
  u.total = u.start_images + (in.init ? nd * sizeof(float) : 0) + nk * sizeof(float) + 2 * N * sizeof(int32_t) +
            (in.eps ? N * sizeof(float) : 0) + N * sizeof(float) /* best losses: +inf */ +
            (active_list ? N * sizeof(int32_t) : 0) /* the identity list */;
  return u;
}

}  // namespace nudge
