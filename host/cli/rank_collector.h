// The root's side and the other ranks' side of an MPI job whose ranks each compute a part (an optimize job's rows,
// a robustness evaluation's points) and send it to rank 0 as journal blocks. rank_job.cpp and robustness_runner.cpp
// use it; with one rank it only calls its callbacks.
#pragma once
#include <nlohmann/json.hpp>

#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "exit_status.h"

namespace nudge::cli {

// Rank 0 while the ranks compute: a receiver thread hands each block of rank r to `append(r, block)` (the root's own
// part it appends itself); the first failure anywhere (another rank's, the receiver's, the root's) is handed to
// `say(rank, why)` (which notes what the journal kept and prints the message) and ends the job, once.
class RankCollector {
 public:
  using Append = std::function<void(int rank, const std::string& block)>;
  using Say = std::function<void(int rank, const ExitStatus& why)>;
  RankCollector(int ranks, Append append, Say say);
  ~RankCollector();
  void start();  // nothing with one rank
  void join();   // returns when every other rank said it is done
  // Never returns: says why and ends every rank (MPI_Abort) with why.code.
  [[noreturn]] void fail(int rank, const ExitStatus& why);
  // The stats each rank sent with its "done" (the root's own: set_own_stats), by rank.
  const std::vector<nlohmann::json>& stats() const { return stats_; }
  void set_own_stats(const nlohmann::json& s) { stats_[0] = s; }

 private:
  void receive();
  int ranks_;
  Append append_;
  Say say_;
  std::vector<nlohmann::json> stats_;
  std::mutex failing_;
  std::thread receiver_;
};

// Every rank, after a set-up that succeeded everywhere: `inputs` names the files this rank read and their digests
// ("path=fnv1a64:..." lines). A rank whose files differ from rank 0's (nodes without a shared file system, given other
// copies) fails the job for every rank with exit 2, the message naming the rank and the first file.
void check_same_inputs_as_root(const std::string& inputs);

// A rank other than the root: blocks and the end of its part go to the root.
void send_block_to_root(const std::string& block);
void send_done_to_root(const nlohmann::json& stats);
// Sends the failure `e` (an Interrupted says only its signal: what was kept is the root's to say).
void send_failure_to_root(std::exception_ptr e);
// Waits (leaving the cores to the root) until the root has committed the results; the root ends the job with
// MPI_Abort instead when anything failed.
void wait_for_root_commit();
// The root, after its commit: releases the waiting ranks.
void release_ranks();

}  // namespace nudge::cli
