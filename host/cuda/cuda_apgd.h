// The CUDA backend's ApgdDevice (host/core/apgd_run.h): an APGD run whose entries' state, network passes and
// bookkeeping stay on the GPU. Per iteration, on the context's stream and with no host wait:
//   apgd_step -> gather the list's rows -> forward -> apgd_loss -> backward to the input -> apgd_track
//   -> compaction of the list (kernels/compact_active) with its length copied to pinned memory behind an event.
// The host reads that length exactly `kApgdCompactionLag` iterations later, never earlier even when it is ready: the
// passes' batch sizes follow the list's lengths, and an adoption that depended on timing would make the results
// depend on it too (cuDNN and cuBLAS may compute other bits at other sizes). Rows broken in between are carried:
// their state is marked done at once, the step and the tracking skip them, and the gather, the network's passes and
// the loss still compute them until the compacted list is adopted.
//
// Memory: everything is allocated in the constructor from the context's chunk pool (seven [m, D] state arrays, the
// batch's images and input gradients, the network's activations); the pool's blocks go back only after the stream
// has been synchronized (the destructor).
#pragma once
#include <memory>
#include <vector>

#include "apgd_run.h"
#include "architecture.h"

namespace nudge::cuda {

class CudaContext;

// Iterations the host queues ahead of a compaction's length: two keep the GPU busy through the host's launch of an
// iteration (~10 launches, tens of microseconds) even when one iteration of a small list takes less than that.
constexpr int kApgdCompactionLag = 2;

// params: the backend's device parameter pointers, unchanged while the run lives. Labels and targets must be valid
// classes (InternalError otherwise: they index logits on the device).
std::unique_ptr<ApgdDevice> make_cuda_apgd_device(CudaContext& ctx, const Architecture& arch,
                                                  std::vector<const float*> params, const ApgdRunInput& in);

}  // namespace nudge::cuda
