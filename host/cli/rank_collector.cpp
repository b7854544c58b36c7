#include "rank_collector.h"

#include <cstdio>

#include "errors.h"
#include "interrupt.h"
#include "rank_world.h"

namespace nudge::cli {

namespace {

std::string failure_text(const ExitStatus& e) { return std::to_string(e.code) + "\n" + e.message; }

ExitStatus failure_from_text(const std::string& text) {
  const size_t nl = text.find('\n');
  ExitStatus e;
  e.code = nl == std::string::npos ? 1 : std::atoi(text.substr(0, nl).c_str());
  if (e.code == 0) e.code = 1;
  e.message = nl == std::string::npos ? text : text.substr(nl + 1);
  return e;
}

}  // namespace

RankCollector::RankCollector(int ranks, Append append, Say say)
    : ranks_(ranks), append_(std::move(append)), say_(std::move(say)), stats_(ranks) {}

RankCollector::~RankCollector() {
  if (receiver_.joinable()) receiver_.join();
}

void RankCollector::start() {
  if (ranks_ == 1) return;
  receiver_ = std::thread([this] {
    try {
      receive();
    } catch (...) {
      // Nothing may escape the thread (std::terminate): if even the failure's message cannot be made, end the job.
      ExitStatus why{1, "internal error in rank 0's receiver"};
      try {
        why = exit_status_of(std::current_exception());
      } catch (...) {
      }
      fail(0, why);
    }
  });
}

void RankCollector::join() {
  if (receiver_.joinable()) receiver_.join();
}

void RankCollector::fail(int rank, const ExitStatus& why) {
  std::lock_guard<std::mutex> lock(failing_);  // a second failure waits here for the first to end the job
  try {
    say_(rank, why);
  } catch (...) {
    std::fprintf(stderr, "nudge: %s\n", why.message.c_str());
  }
  dist::abort_job(why.code);
}

void RankCollector::receive() {
  int waiting = ranks_ - 1;
  while (waiting > 0) {
    dist::Message m = dist::receive_at_root();
    if (m.source <= 0 || m.source >= ranks_) throw InternalError("a message from rank " + std::to_string(m.source));
    if (m.tag == dist::kRows) {
      append_(m.source, m.bytes);
    } else if (m.tag == dist::kDone) {
      stats_[m.source] = nlohmann::json::parse(m.bytes);
      --waiting;
    } else if (m.tag == dist::kFailed) {
      fail(m.source, failure_from_text(m.bytes));
    } else {
      throw InternalError("a message with tag " + std::to_string(m.tag) + " from rank " + std::to_string(m.source));
    }
  }
}

void check_same_inputs_as_root(const std::string& inputs) {
  const dist::World& w = dist::world();
  if (w.size == 1) return;
  const std::string root = dist::broadcast_text_from_root(inputs);
  dist::Outcome mine;
  if (root != inputs) {
    // The first line that differs names the file.
    size_t a = 0;
    while (a < inputs.size() && a < root.size() && inputs[a] == root[a]) ++a;
    const size_t start = inputs.rfind('\n', a == 0 ? 0 : a - 1);
    const size_t from = start == std::string::npos || a == 0 ? 0 : start + 1;
    const std::string line = inputs.substr(from, inputs.find('\n', from) - from);
    mine.code = 2;
    mine.message = "its input files differ from rank 0's (" + line + "): give every node the same files";
  }
  const dist::Outcome first = dist::first_failure(mine);
  if (first.code != 0)
    throw ExitWith(first.code, w.rank != 0 ? "" : "rank " + std::to_string(first.rank) + " of " + std::to_string(w.size) + ": " + first.message);
}

void send_block_to_root(const std::string& block) { dist::send_to_root(dist::kRows, block); }

void send_done_to_root(const nlohmann::json& stats) { dist::send_to_root(dist::kDone, stats.dump()); }

void send_failure_to_root(std::exception_ptr e) {
  ExitStatus why;
  try {
    std::rethrow_exception(e);
  } catch (const Interrupted& x) {
    why = {128 + x.signal, x.what()};
  } catch (...) {
    why = exit_status_of(std::current_exception());
  }
  dist::send_to_root(dist::kFailed, failure_text(why));
}

void wait_for_root_commit() {
  const int code = dist::broadcast_from_root(0);
  if (code != 0) throw ExitWith(code, "");
}

void release_ranks() { dist::broadcast_from_root(0); }

}  // namespace nudge::cli
