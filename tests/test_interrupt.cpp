// SIGINT and SIGTERM stop a running job cleanly (host/core/interrupt.h): exit 130 / 143 with a message, no temporary
// file left behind, and the folder's previous complete results untouched.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cli_sandbox.h"

namespace nudge {
namespace {

using testing_support::CliSandbox;
using testing_support::slurp;

const std::string kModel = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors";

// Starts nudge with `args` (stderr to `err_path`), sends `sig` after `delay`, and returns its wait status.
int run_and_signal(const std::vector<std::string>& args, const std::string& err_path, int sig,
                   std::chrono::milliseconds delay) {
  const int pid = testing_support::spawn_nudge(args, err_path);
  if (pid < 0) return -1;
  std::this_thread::sleep_for(delay);
  ::kill(pid, sig);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

void expect_clean_stop(int sig, int code) {
  CliSandbox box("nudge_sig_");
  const std::string out = box.path("out");
  ASSERT_EQ(box.run({"optimize", "--model", kModel, "--init", "noise", "--count", "4", "--target", "3", "--steps", "2",
                     "--quiet", "--out", out})
                .code,
            0);
  const std::string before = slurp(out + "/results.csv"), npy = slurp(out + "/images.npy");
  // A job of minutes, stopped after its first steps.
  const int status = run_and_signal({"optimize", "--model", kModel, "--init", "noise", "--count", "20000", "--target",
                                     "all", "--steps", "500", "--quiet", "--out", out},
                                    box.path("err.txt"), sig, std::chrono::milliseconds(2500));
  const std::string err = slurp(box.path("err.txt"));
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping; stderr: " << err;
  EXPECT_EQ(WEXITSTATUS(status), code) << err;
  EXPECT_NE(err.find("interrupted by"), std::string::npos) << err;
  EXPECT_EQ(slurp(out + "/results.csv"), before) << "the previous complete results stay";
  EXPECT_EQ(slurp(out + "/images.npy"), npy);
  for (const auto& e : std::filesystem::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Interrupt, SigintStopsTheJobWith130AndLeavesThePreviousResults) { expect_clean_stop(SIGINT, 130); }

TEST(Interrupt, SigtermStopsTheJobWith143AndLeavesThePreviousResults) { expect_clean_stop(SIGTERM, 143); }

}  // namespace
}  // namespace nudge
