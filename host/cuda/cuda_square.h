// The CUDA backend's SquareDevice (host/core/square_run.h): a Square run, L-inf or L2, whose entries' state, candidates and
// forward passes stay on the GPU. Per iteration, on the context's stream and with no host wait:
//   square_propose (into a batch by row of the list) -> forward -> square_accept -> compaction of the list
//   (kernels/compact_active) with its length copied to pinned memory behind an event.
// As in APGD's run (cuda_apgd.h) the host reads that length exactly `kSquareCompactionLag` iterations later, never
// earlier: the forward pass's batch size follows the list's length, and results must not depend on the host's
// timing. Rows broken in between are carried: the proposal and the acceptance skip them, the forward pass still
// computes them until the compacted list is adopted.
//
// Memory: allocated in the constructor from the context's chunk pool: two [m, D] state arrays (clean and best
// images), the [m, D] candidate batch, the network's activations for m images and, for L2, the pattern table.
#pragma once
#include <memory>
#include <vector>

#include "architecture.h"
#include "square_run.h"

namespace nudge::cuda {

class CudaContext;

// A Square iteration is a forward pass only (a third of APGD's), so the host's launches (three kernels and the
// network's) are a larger share: two iterations of lag keep the queue full, as for APGD.
constexpr int kSquareCompactionLag = 2;

// params: the backend's device parameter pointers, unchanged while the run lives. Labels must be valid classes
// (InternalError otherwise: they index logits on the device). Null (the attack then runs on the host) for L2 images
// too large for the kernels' shared scratch.
std::unique_ptr<SquareDevice> make_cuda_square_device(CudaContext& ctx, const Architecture& arch,
                                                      std::vector<const float*> params, const SquareRunInput& in);

}  // namespace nudge::cuda
