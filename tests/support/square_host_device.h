// The tests' SquareDevice (host/core/square_run.h) on the host: the CUDA device's emulation. Entries' state in host
// memory, the rows of square_rows.h and square_l2_rows.h on the host lane executor in either lane order, forward passes through
// Backend::logit_backprop (grad null) and the compaction adopted exactly at the lag given, so that the loop and the
// rows the GPU runs are checked here against the CPU attack (tests/test_square_run.cpp).
#pragma once
#include <memory>

#include "backend.h"
#include "square_run.h"

namespace nudge::test {

std::unique_ptr<SquareDevice> make_host_square_device(Backend& backend, const SquareRunInput& in, int lag,
                                                      bool reverse_lanes);

}  // namespace nudge::test
