// How a failure leaves nudge: an exit status (2 for bad usage or input, 1 for internal and I/O failures, 128 + the
// signal after an interruption) and the one-line message printed after "nudge: ". main() and the MPI ranks, which
// pass a rank's failure to the root, use the same mapping.
#pragma once
#include <exception>
#include <stdexcept>
#include <string>

namespace nudge::cli {

struct ExitStatus {
  int code = 1;
  std::string message;  // without the "nudge: " prefix
};
// The status of the exception `e` (which must not be null).
ExitStatus exit_status_of(std::exception_ptr e);

// Ends a command with `code`, printing `message` (after "nudge: ") unless it is empty: a failure already reported,
// or a rank of an MPI job that leaves the speaking to the root.
struct ExitWith : std::runtime_error {
  ExitWith(int c, const std::string& message) : std::runtime_error(message), code(c) {}
  int code;
};

}  // namespace nudge::cli
