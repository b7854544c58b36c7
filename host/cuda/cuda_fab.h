// The CUDA backend's FabDevice (host/core/fab_run.h): a FAB-T run whose entries' state, network passes and
// projections stay on the GPU. Per iteration, on the context's stream and with no host wait:
//   gather the list's rows -> forward -> fab_boundary -> (a step follows) backward to the input -> fab_update
//   -> compaction of the list (kernels/compact_active) with its length copied to pinned memory behind an event.
// As in APGD's run (cuda_apgd.h) the host reads that length exactly `kFabCompactionLag` iterations later, never
// earlier: the passes' batch sizes follow the list's lengths, and results must not depend on the host's timing. Rows
// broken in between are carried: their state is marked done at once, the update skips them (and drops them from the
// next compaction), the gather and the network's passes still compute them until the compacted list is adopted.
//
// Memory: allocated in the constructor from the context's chunk pool: three [m, D] state arrays (clean images,
// iterates, adversarial examples), the batch's images and input gradients ([m, D] each) and the network's
// activations for m images; the pool's blocks go back only after the stream has been synchronized (the destructor).
#pragma once
#include <memory>
#include <vector>

#include "architecture.h"
#include "fab_run.h"

namespace nudge::cuda {

class CudaContext;

// An iteration is a forward and a backward pass, as APGD's: the same two iterations of lag keep the queue full.
constexpr int kFabCompactionLag = 2;

// params: the backend's device parameter pointers, unchanged while the run lives. Labels and targets must be valid
// classes with target != label (InternalError otherwise: they index logits on the device). An image whose row
// scratch exceeds the device's shared memory per block (kernels/fab.cuh; D > 8,192 on sm_90) is refused with an
// InputError naming D.
std::unique_ptr<FabDevice> make_cuda_fab_device(CudaContext& ctx, const Architecture& arch,
                                                std::vector<const float*> params, const FabRunInput& in);

}  // namespace nudge::cuda
