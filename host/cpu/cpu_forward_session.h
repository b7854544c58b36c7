// The CPU backend's ForwardSession (host/core/forward_session.h): every base's activations kept, and a candidate's
// change followed layer by layer as the rectangle of each map it reaches, recomputed in place and undone unless the
// candidate is kept. Exact because every CPU layer computes each output on its own (column_gemm.h): an output
// recomputed alone is the same bits as in a full pass. Square's late queries change a 2 x 2 to 4 x 4 window, which
// reaches a quarter of conv2 and almost nothing of conv1.
#pragma once
#include <memory>
#include <vector>

#include "architecture.h"
#include "forward_session.h"

namespace nudge {

// Whether the session follows every layer of `arch` (all but bn and dropout, which inference folds away).
bool cpu_forward_session_follows(const Architecture& arch);

// For the inference architecture `arch` and its parameters (one pointer per Architecture::params() entry, which
// must outlive the session); nullptr when cpu_forward_session_follows(arch) is false.
std::unique_ptr<ForwardSession> make_cpu_forward_session(const Architecture& arch, const std::vector<const float*>& params,
                                                         int n, int threads);

}  // namespace nudge
