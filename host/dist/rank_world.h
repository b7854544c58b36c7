// The ranks of an MPI job as nudge uses them: rank 0 (the root) owns the output folder and writes every file; every
// other rank computes its part of the rows and sends them to the root, block by block, as it makes them. Only the
// few calls below cross processes, so the commands need not know MPI (a build without it is a world of one).
//
// Threads (MPI_THREAD_MULTIPLE): the root receives on a thread of its own while its main thread computes, and either
// may end the job with MPI_Abort; a
// non-root rank sends from the optimize engine's writer thread while its main thread waits in the engine.
#pragma once
#include <string>
#include <vector>

namespace nudge::dist {

struct World {
  int rank = 0, size = 1;
  int local_rank = 0;  // the rank among those on this node: picks the node's GPU
};

// Joins the MPI job when this process was started by an MPI launcher (mpirun, mpiexec, srun); otherwise, and in a
// build without MPI, a world of one. Call once, first thing in main().
void start(int* argc, char*** argv);
const World& world();
// Leaves the MPI job (every rank, at the end of main); nothing in a world of one.
void finish();
// Ends every rank of the job at once with exit status `code` (after the caller printed why).
[[noreturn]] void abort_job(int code);

// --- collectives: every rank calls them, in the same order -------------------------------------------------------
// Each rank's outcome of a phase: 0, or an exit code and its message.
struct Outcome {
  int code = 0;
  std::string message;
  int rank = 0;  // in the result: the rank that failed
};
// The first failure in rank order (code 0 if every rank succeeded), on every rank.
Outcome first_failure(const Outcome& mine);
// On the root, `values` has one entry per rank; every rank gets its own.
long scatter_from_root(const std::vector<long>& values);
// The root's `value` on every rank.
int broadcast_from_root(int value);
// The root's `text` on every rank (at most 1 MiB).
std::string broadcast_text_from_root(const std::string& text);

// --- messages to the root ----------------------------------------------------------------------------------------
enum Tag : int { kRows = 1, kDone = 2, kFailed = 3 };
// Any size (sent in pieces that fit MPI's int counts).
void send_to_root(Tag tag, const std::string& bytes);
struct Message {
  int source = 0;
  Tag tag = kRows;
  std::string bytes;
};
// The root: the next message from any rank.
Message receive_at_root();

}  // namespace nudge::dist
