// Chooses and builds a backend: the one place that knows every concrete backend (the CPU's, and CUDA's when built).
#pragma once
#include <memory>
#include <string>

#include "backend.h"

namespace nudge {

// device: "auto" | "cpu" | "cuda". "auto" takes the GPU when nudge was built with CUDA and a device is present,
// else the CPU, and then writes one line to stderr saying why. "cuda" without a usable GPU throws InputError.
// On a node with several GPUs, the GPU is the local rank (the process's rank among an MPI job's ranks on this node)
// modulo the visible devices.
std::unique_ptr<Backend> make_backend(const std::string& device);

// Sets the local rank that make_backend picks the GPU by (0 unless an MPI job says otherwise); `quiet` drops the note
// that the CPU is used (the ranks of an MPI job other than rank 0).
void set_local_rank(int local_rank, bool quiet);

}  // namespace nudge
