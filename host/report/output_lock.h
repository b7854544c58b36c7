// One writer per output folder. A job holds an exclusive flock on DIR/.nudge.lock for as long as it may write there;
// a second job asking for the same folder is refused with an InputError naming the holder (its pid, host, start
// time and command line). The kernel drops the lock when the holder exits, however it exits, so a killed job never
// leaves a stale lock. Holding the lock also means every "NAME.tmp.<pid>" file and every staging folder in the folder
// is a dead job's leftover (AtomicFile's temporaries and result_commit.h's staging are the only writers' files): they
// are removed when the lock is taken, after a commit that a killed job left half done has been finished.
#pragma once
#include <string>

namespace nudge {

class OutputLock {
 public:
  // `command` is recorded for the message a refused job prints. Throws InputError when another job holds the folder
  // and IoError when the lock file cannot be made.
  OutputLock(const std::string& dir, const std::string& command);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  // How many stale temporary files and staging folders the constructor removed.
  int removed_temporaries() const { return removed_; }
  // Whether it finished a commit that a killed job had left half done (result_commit.h).
  bool recovered_commit() const { return recovered_commit_; }

 private:
  int fd_ = -1;
  int removed_ = 0;
  bool recovered_commit_ = false;
};

// The name of the lock file inside an output folder.
constexpr const char* kOutputLockName = ".nudge.lock";

}  // namespace nudge
