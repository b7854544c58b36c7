// Chooses and builds a backend: the one place that knows every concrete backend (the CPU's, and CUDA's when built).
#pragma once
#include <memory>
#include <string>

#include "backend.h"

namespace nudge {

// device: "auto" | "cpu" | "cuda". "auto" takes the GPU when nudge was built with CUDA and a device is present,
// else the CPU, and then writes one line to stderr saying why. "cuda" without a usable GPU throws InputError.
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace nudge
