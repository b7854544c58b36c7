#include "result_commit.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "atomic_file.h"
#include "errors.h"

namespace nudge {

namespace {

constexpr const char* kRecordName = ".nudge-commit";
constexpr const char* kStagingPrefix = ".nudge-staging.";
constexpr const char* kSummaryName = "summary.json";

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw IoError("I/O error: cannot rename " + from + " to " + to + ": " + std::strerror(errno));
}

bool is_result_name(const std::string& name) {
  const auto& names = result_file_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The moves of a commit, in their order; safe to run again after any prefix of them ran (recovery).
void apply_commit(const std::string& dir, const std::string& staging, const std::vector<std::string>& added) {
  auto move_in = [&](const std::string& name) {
    if (exists(staging + "/" + name)) rename_or_throw(staging + "/" + name, dir + "/" + name);
  };
  for (const std::string& name : added)
    if (name != kSummaryName) move_in(name);
  for (const std::string& name : result_file_names())
    if (std::find(added.begin(), added.end(), name) == added.end()) {
      if (::unlink((dir + "/" + name).c_str()) != 0 && errno != ENOENT)
        throw IoError("I/O error: cannot remove " + dir + "/" + name + " of the previous results: " + std::strerror(errno));
    }
  if (std::find(added.begin(), added.end(), kSummaryName) != added.end()) move_in(kSummaryName);
  remove_flat_folder(staging);
  if (::unlink((dir + "/" + kRecordName).c_str()) != 0 && errno != ENOENT)
    throw IoError("I/O error: cannot remove " + dir + "/" + kRecordName + ": " + std::strerror(errno));
}

}  // namespace

const std::vector<std::string>& result_file_names() {
  static const std::vector<std::string> names = {"results.csv", "images.npy", "grid.png",   "classes.png",
                                                  "robustness.png", "rows.nudge",  "run.json",   "summary.json", "summary.incomplete.json"};
  return names;
}

bool is_stale_staging(const std::string& name) {
  const size_t n = std::strlen(kStagingPrefix);
  if (name.compare(0, n, kStagingPrefix) != 0 || name.size() == n) return false;
  if (name.find_first_not_of("0123456789", n) != std::string::npos) return false;
  return name.substr(n) != std::to_string(::getpid());
}

void remove_flat_folder(const std::string& path) {
  if (DIR* d = ::opendir(path.c_str())) {
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
    ::closedir(d);
    for (const std::string& name : names) ::unlink((path + "/" + name).c_str());
  }
  ::rmdir(path.c_str());
}

ResultStaging::ResultStaging(const std::string& dir)
    : dir_(dir), staging_(dir + "/" + kStagingPrefix + std::to_string(::getpid())) {
  if (exists(staging_)) remove_flat_folder(staging_);  // this pid's, from an earlier job of this process
  if (::mkdir(staging_.c_str(), 0777) != 0)
    throw IoError("I/O error: cannot create the staging folder " + staging_ + ": " + std::strerror(errno));
}

ResultStaging::~ResultStaging() {
  if (!committed_) remove_flat_folder(staging_);
}

std::vector<std::pair<std::string, uint64_t>> ResultStaging::staged_files() const {
  std::vector<std::pair<std::string, uint64_t>> files;
  for (const std::string& name : result_file_names()) {
    struct stat st;
    if (::stat(path(name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) files.emplace_back(name, st.st_size);
  }
  return files;
}

void ResultStaging::commit() {
  std::vector<std::string> added;
  if (DIR* d = ::opendir(staging_.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      if (!is_result_name(name)) {
        ::closedir(d);
        throw InternalError("staged file " + name + " is not one of nudge's result files");
      }
      added.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(added.begin(), added.end());
  std::string record = "nudge-commit 1\nstaging " + staging_.substr(dir_.size() + 1) + "\n";
  for (const std::string& name : added) record += "add " + name + "\n";
  write_file_atomically(dir_ + "/" + kRecordName, record);
  apply_commit(dir_, staging_, added);
  committed_ = true;
}

bool recover_commit(const std::string& dir) {
  const std::string path = dir + "/" + kRecordName;
  if (!exists(path)) return false;
  std::istringstream in(read_file(path, 1 << 16));
  std::string line, staging;
  std::vector<std::string> added;
  const std::string bad = path + " is not a commit record nudge wrote; remove it to use this folder";
  if (!std::getline(in, line) || line != "nudge-commit 1") throw InputError(bad);
  while (std::getline(in, line)) {
    if (line.rfind("staging ", 0) == 0) {
      staging = line.substr(8);
      if (staging.compare(0, std::strlen(kStagingPrefix), kStagingPrefix) != 0 || staging.find('/') != std::string::npos)
        throw InputError(bad);
    } else if (line.rfind("add ", 0) == 0 && is_result_name(line.substr(4))) {
      added.push_back(line.substr(4));
    } else {
      throw InputError(bad);
    }
  }
  if (staging.empty()) throw InputError(bad);
  apply_commit(dir, dir + "/" + staging, added);
  return true;
}

}  // namespace nudge
