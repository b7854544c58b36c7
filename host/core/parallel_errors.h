// An exception that leaves an OpenMP region ends the process (std::terminate, SIGABRT, temporaries left behind). The
// bodies of nudge's parallel regions run through ParallelErrors::run instead: the first exception (std::bad_alloc, an
// InputError from a start image) is kept, the remaining iterations are skipped, and rethrow() raises it once the region
// has ended, where the CLI turns it into an exit code.
#pragma once
#include <atomic>
#include <exception>
#include <mutex>

namespace nudge {

class ParallelErrors {
 public:
  // Runs f unless an earlier call failed; never throws.
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
      failed_ = true;
    }
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  // Call after the region.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace nudge
