// The CPU backend: OpenBLAS-backed layers, parallel over the batch with OpenMP (one CpuNetwork per thread).
#pragma once
#include <memory>

#include "backend.h"

namespace nudge {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace nudge
