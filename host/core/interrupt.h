// SIGINT and SIGTERM as a request to stop: the first one sets a flag that long loops poll (the optimize engine after
// every step), so a job unwinds normally, every AtomicFile removes its temporary file, and the output folder keeps
// the previous complete results; nudge then exits 128 + the signal (130, 143). A second signal kills at once, as
// usual. Until resume exists (issue 14) an interrupted job keeps nothing of its own.
#pragma once
#include <stdexcept>
#include <string>

namespace nudge {

struct Interrupted : std::runtime_error {
  Interrupted(int sig, const std::string& what) : std::runtime_error(what), signal(sig) {}
  int signal;
};

// Call once, first thing in main().
void install_interrupt_handlers();
// The signal that asked to stop, or 0.
int interrupt_signal();
// Throws Interrupted naming `where` when a stop was asked for.
void throw_if_interrupted(const char* where);

}  // namespace nudge
