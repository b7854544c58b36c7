// The host's ApgdDevice (apgd_run.h): entries' state in host memory, the network through Backend::logit_backprop,
// the rows through apgd_rows.h with the host lane executor, so the CPU runs the very row code of the GPU's kernels.
// Used on every backend without a device run of its own, and by the tests as the GPU run's emulation.
#pragma once
#include <memory>

#include "apgd_run.h"
#include "backend.h"

namespace nudge {

// lag: iterations before a compaction is adopted (0 in production: broken rows leave the list before the next
// step; the tests vary it, and results must not change). reverse_lanes: run each phase's lanes in reverse order.
std::unique_ptr<ApgdDevice> make_host_apgd_device(Backend& backend, const ApgdRunInput& in, int lag = 0,
                                                  bool reverse_lanes = false);

}  // namespace nudge
