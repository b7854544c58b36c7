// The host's FabDevice (fab_run.h): entries' state in host memory, the network through Backend::logit_backprop, the
// rows through fab_rows.h with the host lane executor, so the CPU runs the very row code of the GPU's kernels.
// Used on every backend without a device run of its own, and by the tests as the GPU run's emulation.
#pragma once
#include <memory>

#include "backend.h"
#include "fab_run.h"

namespace nudge {

// lag: iterations before a compaction is adopted (0 in production; the tests vary it, and results must not
// change). reverse_lanes: run each phase's lanes in reverse order.
std::unique_ptr<FabDevice> make_host_fab_device(Backend& backend, const FabRunInput& in, int lag = 0,
                                                bool reverse_lanes = false);

}  // namespace nudge
