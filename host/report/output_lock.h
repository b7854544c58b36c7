// One writer per output folder. A job holds an exclusive flock on DIR/.nudge.lock (core/file_lock.h) for as long as
// it may write there; a second job asking for the same folder is refused with an InputError naming the holder (its
// pid, host, start time and command line). Holding the lock also means every "NAME.tmp.<pid>" file and staging folder
// in the folder is a dead job's leftover (AtomicFile's temporaries and result_commit.h's staging are the only writers'
// files): they are removed when the lock is taken, after a commit that a killed job left half done is finished.
#pragma once
#include <string>

#include "file_lock.h"

namespace nudge {

class OutputLock {
 public:
  // `command` is recorded for the message a refused job prints. Throws InputError when another job holds the folder
  // and IoError when the lock file cannot be made.
  OutputLock(const std::string& dir, const std::string& command);
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  // How many stale temporary files and staging folders the constructor removed.
  int removed_temporaries() const { return removed_; }
  // Whether it finished a commit that a killed job had left half done (result_commit.h).
  bool recovered_commit() const { return recovered_commit_; }

 private:
  // The file stays on release: optimize_report.cpp removes it with the folders a failed job made.
  FileLock lock_;
  bool recovered_commit_ = false;  // declared before removed_: set while removed_ is computed
  int removed_ = 0;
};

// The name of the lock file inside an output folder.
constexpr const char* kOutputLockName = ".nudge.lock";

}  // namespace nudge
