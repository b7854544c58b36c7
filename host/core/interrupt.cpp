#include "interrupt.h"

#include <signal.h>

#include <atomic>
#include <cstring>

namespace nudge {

namespace {

std::atomic<int> g_signal{0};  // lock-free on every platform nudge builds for: safe to store from a handler

void on_signal(int sig) { g_signal.store(sig, std::memory_order_relaxed); }

}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  // SA_RESETHAND: the second signal meets the default action and kills, for a user who does not want to wait.
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int interrupt_signal() { return g_signal.load(std::memory_order_relaxed); }

void throw_if_interrupted(const char* where) {
  const int sig = interrupt_signal();
  if (sig == 0) return;
  throw Interrupted(sig, std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal") +
                             " during " + where);
}

}  // namespace nudge
