// A build without MPI: one process is the whole world, and the calls that would need another rank cannot happen.
#include <cstdio>
#include <cstdlib>

#include "errors.h"
#include "rank_world.h"

namespace nudge::dist {

namespace {
const World kOne;
}

// An MPI launcher's rank count, where it says one: started by mpirun, a build without MPI would run the whole job in
// every rank, all on one output folder.
void start(int*, char***) {
  // srun with PMIx says the task count only as Slurm's.
  const bool pmix = std::getenv("PMIX_RANK") != nullptr;
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", pmix ? "SLURM_NTASKS" : "OMPI_COMM_WORLD_SIZE"}) {
    const char* n = std::getenv(v);
    if (n && std::atoi(n) > 1) {
      std::fprintf(stderr, "nudge: started as one of %s MPI ranks, but this nudge was built without MPI "
                   "(install libopenmpi-dev and rebuild; tools/install_deps.sh does)\n", n);
      std::exit(2);
    }
  }
}
const World& world() { return kOne; }
void finish() {}
void abort_job(int code) { std::exit(code); }
Outcome first_failure(const Outcome& mine) { return mine; }
long scatter_from_root(const std::vector<long>& values) { return values.at(0); }
int broadcast_from_root(int value) { return value; }
std::string broadcast_text_from_root(const std::string& text) { return text; }
void send_to_root(Tag, const std::string&) { throw InternalError("send_to_root in a world of one process"); }
Message receive_at_root() { throw InternalError("receive_at_root in a world of one process"); }

}  // namespace nudge::dist
