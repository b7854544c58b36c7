// The two kinds of failure nudge distinguishes. Library code throws; only the CLI's main turns these into exit codes.
#pragma once
#include <cstddef>
#include <new>
#include <stdexcept>
#include <string>

namespace nudge {

// Bad usage or bad input (a malformed file, an impossible job): the CLI exits with 2.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failure that is not the user's doing (CUDA error, I/O failure on write, a broken invariant): exit 1.
struct InternalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failed read or write of a file nudge had opened (ENOSPC, EIO, a quota): exit 1, reported as an I/O error with the
// path and the system's reason, so that a full disk is not mistaken for a bug.
struct IoError : InternalError {
  using InternalError::InternalError;
};

// An allocation that failed, with what it was for and its size: exit 1, "out of memory: ...". A std::bad_alloc, so
// that the engine still halves a chunk that does not fit.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// Runs f, turning std::bad_alloc into OutOfMemory naming `what` and `bytes`.
template <class F>
auto with_memory_named(const std::string& what, size_t bytes, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const OutOfMemory&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw OutOfMemory("out of memory: " + what + " needs " + std::to_string(bytes) + " bytes");
  }
}

}  // namespace nudge
