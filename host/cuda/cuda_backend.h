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
std::unique_ptr<Backend> make_cuda_backend();

}  // namespace nudge
