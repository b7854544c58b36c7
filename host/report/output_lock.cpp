#include "output_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "errors.h"
#include "result_commit.h"

namespace nudge {

namespace {

// The pid of "NAME.tmp.<pid>", a temporary file of AtomicFile (or of an older nudge writing the same way), as text;
// "" for any other name.
std::string temporary_pid(const std::string& name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string::npos || at == 0 || at + 5 >= name.size()) return "";
  for (size_t i = at + 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return "";
  return name.substr(at + 5);
}

std::string holder_of(int fd) {
  char buf[1024];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string text = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text.empty() ? "a job that has not yet said who it is" : text;
}

}  // namespace

OutputLock::OutputLock(const std::string& dir, const std::string& command) {
  const std::string path = dir + "/" + kOutputLockName;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError("cannot create the lock file " + path + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string who = err == EWOULDBLOCK ? holder_of(fd_) : std::string(std::strerror(err));
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK) throw InputError("output folder " + dir + " is in use by another nudge job (" + who + ")");
    throw IoError("cannot lock " + path + ": " + who);
  }
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  char when[64] = {0};
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string me = "pid " + std::to_string(::getpid()) + " on " + host + ", started " + when + ": " + command;
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    throw IoError("cannot write the lock file " + path + ": " + std::strerror(errno));

  // A commit that a killed job left half done is finished first: its staging folder holds the new set.
  recovered_commit_ = recover_commit(dir);
  // With the lock held no other job writes here, so every temporary file and staging folder is a dead job's.
  const std::string mine = std::to_string(::getpid());
  std::vector<std::string> stale, stale_staging;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string pid = temporary_pid(e->d_name);
      if (!pid.empty() && pid != mine) stale.push_back(e->d_name);
      if (is_stale_staging(e->d_name)) stale_staging.push_back(e->d_name);
    }
    ::closedir(d);
  }
  for (const std::string& name : stale)
    if (::unlink((dir + "/" + name).c_str()) == 0) ++removed_;
  for (const std::string& name : stale_staging) {
    remove_flat_folder(dir + "/" + name);
    ++removed_;
  }
}

OutputLock::~OutputLock() {
  // Closing drops the flock. The file stays: unlinking it would let a job that opened it just before lock a file
  // nobody else can find.
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace nudge
