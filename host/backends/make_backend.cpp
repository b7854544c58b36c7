#include "make_backend.h"

#include <iostream>

#include "cpu_backend.h"
#include "errors.h"
#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#endif

namespace nudge {

namespace {
int g_local_rank = 0;
bool g_quiet = false;
}  // namespace

void set_local_rank(int local_rank, bool quiet) {
  g_local_rank = local_rank < 0 ? 0 : local_rank;
  g_quiet = quiet;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw InputError("unknown device '" + device + "' (expected auto, cpu or cuda)");
  if (device == "cpu") return make_cpu_backend();
#if NUDGE_HAVE_CUDA
  std::string why;
  if (cuda_device_usable(&why)) return make_cuda_backend(g_local_rank % cuda_device_count());
  if (device == "cuda") throw InputError("--device cuda: " + why);
  // Once per process: an ensemble with a judge makes several backends.
  static bool said = false;
  if (!said && !g_quiet) std::cerr << "nudge: " << why << "; using the CPU\n";
  said = true;
#else
  (void)g_local_rank;  // one CPU backend whatever the rank
  if (device == "cuda") throw InputError("--device cuda: this nudge was built without CUDA (NUDGE_CUDA=OFF or no toolkit)");
#endif
  return make_cpu_backend();
}

}  // namespace nudge
