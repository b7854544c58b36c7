#include "file_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

#include "errors.h"

namespace nudge {

namespace {

std::string holder_of(int fd) {
  char buf[1024];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string text = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text.empty() ? "a job that has not yet said who it is" : text;
}

// Whether the open file fd is still the one `path` names (a holder with remove_on_release unlinks it on release).
bool still_named(int fd, const std::string& path) {
  struct stat open_st, path_st;
  return ::fstat(fd, &open_st) == 0 && ::stat(path.c_str(), &path_st) == 0 && open_st.st_dev == path_st.st_dev &&
         open_st.st_ino == path_st.st_ino;
}

// The pid of "NAME.tmp.<pid>", a temporary file of AtomicFile (or of an older nudge writing the same way), as text;
// "" for any other name.
std::string temporary_pid(const std::string& name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string::npos || at == 0 || at + 5 >= name.size()) return "";
  for (size_t i = at + 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return "";
  return name.substr(at + 5);
}

}  // namespace

FileLock::FileLock(const std::string& path, const std::string& what, const std::string& command,
                   bool remove_on_release)
    : path_(path), remove_(remove_on_release) {
  // A few rounds at most: each retry means a holder released and unlinked the file between our open and our flock.
  for (int attempt = 0; fd_ < 0; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw IoError("cannot create the lock file " + path + ": " + std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string who = err == EWOULDBLOCK ? holder_of(fd) : std::string(std::strerror(err));
      ::close(fd);
      if (err == EWOULDBLOCK) throw InputError(what + " is in use by another nudge job (" + who + ")");
      throw IoError("cannot lock " + path + ": " + who);
    }
    if (still_named(fd, path)) {
      fd_ = fd;
    } else {
      ::close(fd);
      if (attempt == 100) throw IoError("cannot lock " + path + ": it keeps being replaced");
    }
  }
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  char when[64] = {0};
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string me = "pid " + std::to_string(::getpid()) + " on " + host + ", started " + when + ": " + command;
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    const std::string reason = std::strerror(errno);
    ::close(fd_);
    throw IoError("cannot write the lock file " + path + ": " + reason);
  }
}

FileLock::~FileLock() {
  // Unlinked before the close that drops the flock: a job waiting on this file then finds it gone and retries.
  if (remove_) ::unlink(path_.c_str());
  ::close(fd_);
}

int remove_stale_temporaries(const std::string& dir, const std::string& name) {
  const std::string mine = std::to_string(::getpid());
  std::vector<std::string> stale;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string entry = e->d_name;
      const std::string pid = temporary_pid(entry);
      if (pid.empty() || pid == mine) continue;
      if (name.empty() || (entry.size() == name.size() + 5 + pid.size() && entry.compare(0, name.size(), name) == 0))
        stale.push_back(entry);
    }
    ::closedir(d);
  }
  int removed = 0;
  for (const std::string& entry : stale)
    if (::unlink((dir + "/" + entry).c_str()) == 0) ++removed;
  return removed;
}

}  // namespace nudge
