// The ranks of an MPI job, over MPI (Open MPI from Debian, or any MPI-3 library).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstdint>
#include <cstdlib>

#include "errors.h"
#include "rank_world.h"

namespace nudge::dist {

namespace {

World g_world;
bool g_started = false;

// MPI's default handler ends the job on an error; a return code that is not MPI_SUCCESS still gets named here.
void check(int rc, const char* what, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, text, &n);
  throw IoError(std::string("I/O error: ") + what + " failed at " + file + ":" + std::to_string(line) + ": " +
                std::string(text, static_cast<size_t>(n)));
}
#define MPI_CHECK(call) check((call), #call, __FILE__, __LINE__)

// Started by a launcher: Open MPI's mpirun, PMIx (srun, prte) or a PMI-1/2 launcher (MPICH's hydra, srun --mpi=pmi2).
// A plain `nudge ...` stays out of MPI: initialising it alone is slow and can print warnings about the network.
bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

// MPI counts are ints: pieces of at most 1 GiB.
constexpr uint64_t kPiece = uint64_t{1} << 30;

}  // namespace

void start(int* argc, char*** argv) {
  if (g_started || !launched_by_mpi()) return;
  int provided = 0;
  // The root's receiver thread calls MPI while its main thread may end the job with MPI_Abort.
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  g_started = true;
  if (provided < MPI_THREAD_MULTIPLE) {
    std::fprintf(stderr, "nudge: this MPI library gives thread level %d; nudge needs MPI_THREAD_MULTIPLE (rank 0 "
                 "receives on one thread while another may end the job)\n", provided);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_world.size));
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_world.rank, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &g_world.local_rank));
  MPI_CHECK(MPI_Comm_free(&node));
}

const World& world() { return g_world; }

void finish() {
  if (!g_started) return;
  g_started = false;
  MPI_Finalize();
}

void abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (g_started) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

Outcome first_failure(const Outcome& mine) {
  if (g_world.size == 1) return mine;
  std::vector<int> codes(g_world.size);
  int code = mine.code;
  MPI_CHECK(MPI_Allgather(&code, 1, MPI_INT, codes.data(), 1, MPI_INT, MPI_COMM_WORLD));
  const auto it = std::find_if(codes.begin(), codes.end(), [](int c) { return c != 0; });
  Outcome out;
  if (it == codes.end()) return out;
  out.rank = static_cast<int>(it - codes.begin());
  out.code = *it;
  std::string text = g_world.rank == out.rank ? mine.message : std::string();
  uint64_t n = text.size();
  MPI_CHECK(MPI_Bcast(&n, 1, MPI_UINT64_T, out.rank, MPI_COMM_WORLD));
  n = std::min<uint64_t>(n, 1 << 20);  // a message, not a payload
  text.resize(n);
  MPI_CHECK(MPI_Bcast(text.data(), static_cast<int>(n), MPI_CHAR, out.rank, MPI_COMM_WORLD));
  out.message = text;
  return out;
}

long scatter_from_root(const std::vector<long>& values) {
  if (g_world.size == 1) return values.at(0);
  if (g_world.rank == 0 && values.size() != static_cast<size_t>(g_world.size))
    throw InternalError("scatter_from_root: " + std::to_string(values.size()) + " values for " +
                        std::to_string(g_world.size) + " ranks");
  std::vector<int64_t> v(values.begin(), values.end());
  int64_t mine = 0;
  MPI_CHECK(MPI_Scatter(v.data(), 1, MPI_INT64_T, &mine, 1, MPI_INT64_T, 0, MPI_COMM_WORLD));
  return static_cast<long>(mine);
}

int broadcast_from_root(int value) {
  if (g_world.size == 1) return value;
  // The ranks wait here while the root writes the results: polled, so that they leave the cores to the root.
  MPI_Request request;
  MPI_CHECK(MPI_Ibcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD, &request));
  for (int done = 0;;) {
    MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) break;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return value;
}

std::string broadcast_text_from_root(const std::string& text) {
  if (g_world.size == 1) return text;
  uint64_t n = std::min<uint64_t>(text.size(), 1 << 20);
  MPI_CHECK(MPI_Bcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD));
  std::string out = g_world.rank == 0 ? text.substr(0, n) : std::string(n, '\0');
  MPI_CHECK(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD));
  return out;
}

void send_to_root(Tag tag, const std::string& bytes) {
  uint64_t n = bytes.size();
  MPI_CHECK(MPI_Send(&n, 1, MPI_UINT64_T, 0, tag, MPI_COMM_WORLD));
  for (uint64_t at = 0; at < n; at += kPiece) {
    const int piece = static_cast<int>(std::min(kPiece, n - at));
    MPI_CHECK(MPI_Send(bytes.data() + at, piece, MPI_BYTE, 0, tag, MPI_COMM_WORLD));
  }
}

Message receive_at_root() {
  // Open MPI's blocking receive spins on a core, and the root's receiver shares its cores with the root's own part:
  // poll, and sleep between polls (a block arrives every chunk, seconds apart).
  MPI_Status st;
  for (int flag = 0;;) {
    MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st));
    if (flag) break;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  uint64_t n = 0;
  MPI_CHECK(MPI_Recv(&n, 1, MPI_UINT64_T, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, &st));
  Message m;
  m.source = st.MPI_SOURCE;
  m.tag = static_cast<Tag>(st.MPI_TAG);
  m.bytes.resize(n);
  // Messages between two ranks arrive in the order sent, so the pieces follow their length.
  for (uint64_t at = 0; at < n; at += kPiece) {
    const int piece = static_cast<int>(std::min(kPiece, n - at));
    MPI_CHECK(MPI_Recv(m.bytes.data() + at, piece, MPI_BYTE, m.source, m.tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
  }
  return m;
}

}  // namespace nudge::dist
