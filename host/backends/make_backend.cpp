#include "make_backend.h"

#include <iostream>

#include "cpu_backend.h"
#include "errors.h"
#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#endif

namespace nudge {

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw InputError("unknown device '" + device + "' (expected auto, cpu or cuda)");
  if (device == "cpu") return make_cpu_backend();
#if NUDGE_HAVE_CUDA
  std::string why;
  if (cuda_device_usable(&why)) return make_cuda_backend();
  if (device == "cuda") throw InputError("--device cuda: " + why);
  // Once per process: an ensemble with a judge makes several backends.
  static bool said = false;
  if (!said) std::cerr << "nudge: " << why << "; using the CPU\n";
  said = true;
#else
  if (device == "cuda") throw InputError("--device cuda: this nudge was built without CUDA (NUDGE_CUDA=OFF or no toolkit)");
#endif
  return make_cpu_backend();
}

}  // namespace nudge
