// SIGINT and SIGTERM as a request to stop: the first one sets a flag that long loops poll (the optimize engine after
// every step), so a job unwinds normally, every AtomicFile removes its temporary file, and the output folder keeps
// the previous complete results; nudge then exits 128 + the signal (130, 143). A second signal kills at once, as
// usual. An optimize or visualize job keeps the rows of its finished chunks in its journal (report/job_journal.h),
// nudge train its last complete epoch's checkpoint, nudge robustness its finished chunks of points (report/
// robustness_journal.h); each says what it kept.
#pragma once
#include <stdexcept>
#include <string>

namespace nudge {

struct Interrupted : std::runtime_error {
  Interrupted(int sig, const std::string& what) : std::runtime_error(what), signal(sig) {}
  int signal;
  // What the job kept and how to continue it, for main's message; empty: nothing of the run was kept.
  std::string kept;
};

// Call once, first thing in main().
void install_interrupt_handlers();
// The signal that asked to stop, or 0.
int interrupt_signal();
// Throws Interrupted naming `where` when a stop was asked for.
void throw_if_interrupted(const char* where);

}  // namespace nudge
