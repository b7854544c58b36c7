#include "output_lock.h"

#include <dirent.h>

#include <string>
#include <vector>

#include "result_commit.h"

namespace nudge {

namespace {

// A commit that a killed job left half done is finished first (its staging folder holds the new set); then every
// other staging folder is a dead job's and goes, as do the temporaries.
int recover_and_clean(const std::string& dir, bool* recovered) {
  *recovered = recover_commit(dir);
  std::vector<std::string> stale;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d))
      if (is_stale_staging(e->d_name)) stale.push_back(e->d_name);
    ::closedir(d);
  }
  for (const std::string& name : stale) remove_flat_folder(dir + "/" + name);
  return static_cast<int>(stale.size()) + remove_stale_temporaries(dir);
}

}  // namespace

OutputLock::OutputLock(const std::string& dir, const std::string& command)
    : lock_(dir + "/" + kOutputLockName, "output folder " + dir, command, false),
      removed_(recover_and_clean(dir, &recovered_commit_)) {}

}  // namespace nudge
