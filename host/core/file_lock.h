// An exclusive, non-blocking flock on a lock file, held for as long as a job may write what the lock guards (an
// output folder: report/output_lock.h; a trained model and its checkpoint: cli/cmd_train.cpp). The file records the
// holder (pid, host, start time, command line) so that a refused job can name it. The kernel drops a flock when its
// holder exits, however it exits, so a killed job never leaves a stale lock.
#pragma once
#include <string>

namespace nudge {

class FileLock {
 public:
  // Takes the lock on `path`, creating the file. `what` names the guarded thing in the refusal: InputError "<what>
  // is in use by another nudge job (<holder>)". IoError when the file cannot be made or written. With
  // remove_on_release the destructor unlinks the file (while still holding it); the constructor re-checks after
  // locking that `path` is still the file it locked, so a job that opened it just before it went retries on the new
  // one instead of locking a file nobody else can find.
  FileLock(const std::string& path, const std::string& what, const std::string& command, bool remove_on_release);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
  bool remove_ = false;
};

// Removes AtomicFile's temporaries ("NAME.tmp.<pid>") of other processes in folder `dir`: every one when `name` is
// empty, else only those of file `name`. Call only while holding the lock that guards those files, so that each is
// a dead job's leftover. Returns how many were removed.
int remove_stale_temporaries(const std::string& dir, const std::string& name = "");

}  // namespace nudge
