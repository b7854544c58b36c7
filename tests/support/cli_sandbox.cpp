#include "cli_sandbox.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

extern char** environ;

namespace nudge::testing_support {

namespace fs = std::filesystem;

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int spawn_nudge(const std::vector<std::string>& args, const std::string& err_path) {
  std::vector<std::string> full{NUDGE_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? static_cast<int>(pid) : -1;
}

CliSandbox::CliSandbox(const std::string& prefix) : dir_(prefix), root_(dir_.path()) {
  fs::create_directory(root_ / "work");
  fs::create_directory(root_ / "capture");
}

RunOutput CliSandbox::run(const std::vector<std::string>& args, const std::string& cwd, const std::string& shell) const {
  return run_in(shell, cwd, "", args);
}

RunOutput CliSandbox::run_launched(const std::string& launcher, const std::vector<std::string>& args) const {
  return run_in("", "", launcher + " ", args);
}

RunOutput CliSandbox::run_in(const std::string& shell, const std::string& cwd, const std::string& launcher,
                             const std::vector<std::string>& args) const {
  const fs::path out = root_ / "capture" / "stdout", err = root_ / "capture" / "stderr";
  std::string cmd = shell + " cd " + quote(cwd.empty() ? work().string() : cwd) + " && " + launcher + quote(NUDGE_BINARY);
  for (const std::string& a : args) cmd += " " + quote(a);
  cmd += " </dev/null >" + quote(out.string()) + " 2>" + quote(err.string());
  const int status = std::system(cmd.c_str());
  RunOutput r;
  r.code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

std::vector<std::string> CliSandbox::leftovers(const std::vector<std::string>& result_names) const {
  std::vector<std::string> found;
  for (const auto& e : fs::recursive_directory_iterator(work())) {
    const std::string name = e.path().filename().string();
    if (std::find(result_names.begin(), result_names.end(), name) != result_names.end() ||
        name.find(".tmp.") != std::string::npos)
      found.push_back(fs::relative(e.path(), work()).string());
  }
  return found;
}

int spawn_and_signal(const std::vector<std::string>& args, const std::string& err_path, int sig,
                     std::chrono::milliseconds delay) {
  const int pid = spawn_nudge(args, err_path);
  if (pid < 0) return -1;
  std::this_thread::sleep_for(delay);
  ::kill(pid, sig);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

}  // namespace nudge::testing_support
