// Running the real nudge binary (NUDGE_BINARY) from the CLI suites: a private folder whose work/ is the command's
// current directory and whose capture/ receives its stdout and stderr.
#pragma once
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "temp_dir.h"

namespace nudge::testing_support {

// `s` in single quotes for /bin/sh, embedded single quotes escaped.
std::string quote(const std::string& s);

// The whole file as bytes ("" when it cannot be opened).
std::string slurp(const std::filesystem::path& p);

// Starts nudge with `args` without waiting for it (stdin and stdout /dev/null, stderr to `err_path`, the current
// directory unchanged, so paths should be absolute). Returns its pid, or -1 when it could not start.
int spawn_nudge(const std::vector<std::string>& args, const std::string& err_path);

struct RunOutput {
  int code = -1;  // the exit status, or -1 when the command did not exit normally
  std::string out, err;
};

// Starts nudge with `args` (stdout to /dev/null, stderr to `err_path`), sends `sig` after `delay`, and returns its
// wait status (-1 when it could not be started).
int spawn_and_signal(const std::vector<std::string>& args, const std::string& err_path, int sig,
                     std::chrono::milliseconds delay);

class CliSandbox {
 public:
  // The folder under ::testing::TempDir() is named `prefix` followed by six random characters.
  explicit CliSandbox(const std::string& prefix = "nudge_cli_");
  CliSandbox(const CliSandbox&) = delete;
  CliSandbox& operator=(const CliSandbox&) = delete;

  std::filesystem::path work() const { return root_ / "work"; }
  // The full path of `name` inside work/.
  std::string path(const std::string& name) const { return (work() / name).string(); }

  // Runs nudge with `args` (stdin from /dev/null) in folder `cwd` (default: work/). `shell` runs first in the same
  // /bin/sh, e.g. "ulimit -f 64; trap '' XFSZ;" to give nudge a full disk.
  RunOutput run(const std::vector<std::string>& args, const std::string& cwd = "", const std::string& shell = "") const;
  // Runs `launcher` (words for /bin/sh, e.g. "mpirun -np 2") with nudge and `args` after it, in work/.
  RunOutput run_launched(const std::string& launcher, const std::vector<std::string>& args) const;

  // Paths, relative to work/, of every file anywhere under work/ whose name is one of `result_names` or contains
  // ".tmp.".
  std::vector<std::string> leftovers(const std::vector<std::string>& result_names) const;

 private:
  RunOutput run_in(const std::string& shell, const std::string& cwd, const std::string& launcher,
                   const std::vector<std::string>& args) const;
  TempDir dir_;  // removed with the sandbox
  std::filesystem::path root_;
};

}  // namespace nudge::testing_support
