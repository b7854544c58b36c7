// The two kinds of failure nudge distinguishes. Library code throws; only the CLI's main turns these into exit codes.
#pragma once
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

}  // namespace nudge
