// Entry points of the CUDA backend (host/cuda/, built only when NUDGE_HAVE_CUDA). This header includes no CUDA,
// so the rest of the library compiles without the toolkit.
#pragma once
#include <memory>
#include <string>

#include "backend.h"

namespace nudge {

// Whether a usable CUDA device is present; when not, `why` says why in a few words (no driver, no device, the
// device's architecture is not among those compiled in).
bool cuda_device_usable(std::string* why);
// The visible CUDA devices (0 when none or no driver).
int cuda_device_count();
// A backend on device `device` (0 <= device < cuda_device_count()).
std::unique_ptr<Backend> make_cuda_backend(int device = 0);
// Why the CUDA backend will not train `arch` ("" when it will): it trains no bn or dropout layers (CUDA batch-norm
// training is not written; inference runs such models folded). Needs no device, so nudge train and the tests can
// ask before one is opened.
std::string cuda_training_refusal(const Architecture& arch);

}  // namespace nudge
