#include "output_lock.h"

namespace nudge {

OutputLock::OutputLock(const std::string& dir, const std::string& command)
    : lock_(dir + "/" + kOutputLockName, "output folder " + dir, command, false),
      removed_(remove_stale_temporaries(dir)) {}

}  // namespace nudge
