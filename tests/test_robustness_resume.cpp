// nudge robustness as a job that survives interruption (issue 14): its points are journaled slice by slice, so SIGTERM
// leaves exit 143 and summary.incomplete.json, SIGKILL at random moments loses at most the slice being evaluated, and
// --resume finishes either to the folder an uninterrupted run writes, byte for byte; --chunk changes nothing; a resume
// of another evaluation is refused naming the difference; a finished one has nothing to resume.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli_sandbox.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;
using testing_support::CliSandbox;
using testing_support::slurp;

const std::string kModel = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn_robust.safetensors";
const std::string kData = std::string(NUDGE_SOURCE_DIR) + "/data/mnist";
const std::vector<std::string> kResultFiles = {"results.csv", "images.npy", "robustness.png", "summary.json"};

// Every attack of the cascade, cut short, on enough points in small slices that a signal lands mid-evaluation.
std::vector<std::string> evaluation(const std::string& out, const std::string& chunk = "10",
                                    const std::string& eps = "0.2,0.3") {
  return {"robustness", "--model", kModel, "--data", kData, "--count", "120", "--eps", eps, "--attacks", "standard",
          "--apgd-iters", "10", "--fab-iters", "10", "--square-queries", "100", "--targets", "3", "--chunk", chunk,
          "--device", "cpu", "--quiet", "--out", out};  // the journal's logic, not a GPU's determinism
}

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

void expect_same_results(const std::string& a, const std::string& b) {
  for (const std::string& f : kResultFiles) {
    const std::string x = slurp(a + "/" + f), y = slurp(b + "/" + f);
    EXPECT_FALSE(x.empty()) << a << "/" << f;
    EXPECT_TRUE(x == y) << f << " differs between " << a << " and " << b;
  }
}

class RobustnessResume : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kData + "/t10k-images-idx3-ubyte")) GTEST_SKIP() << "MNIST is not in data/mnist (data/fetch_mnist.sh)";
  }
};

TEST_F(RobustnessResume, SigtermThenResumeAndChunkSizeGiveTheUninterruptedFolder) {
  CliSandbox box("nudge_rob_resume_");
  const auto whole = box.run(evaluation(box.path("whole")));
  ASSERT_EQ(whole.code, 0) << whole.err;
  const auto big = box.run(evaluation(box.path("big_chunks"), "4096"));
  ASSERT_EQ(big.code, 0) << big.err;
  expect_same_results(box.path("whole"), box.path("big_chunks"));

  const std::string out = box.path("stopped");
  // SIGTERM once the first chunks are in the journal, whatever the machine's speed.
  const int pid = testing_support::spawn_nudge(evaluation(out), box.path("err.txt"));
  ASSERT_GT(pid, 0);
  const std::string journal = out + "/.nudge-journal/robustness-0-of-1.nudge";
  for (int i = 0; i < 1200; ++i) {
    std::error_code ec;
    if (fs::exists(journal) && fs::file_size(journal, ec) > 60000) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "nudge did not exit after SIGTERM";
  EXPECT_EQ(WEXITSTATUS(status), 143) << slurp(box.path("err.txt"));
  EXPECT_NE(slurp(box.path("err.txt")).find("--resume"), std::string::npos) << slurp(box.path("err.txt"));
  EXPECT_FALSE(fs::exists(out + "/summary.json"));
  EXPECT_TRUE(fs::exists(out + "/summary.incomplete.json"));

  const auto other = box.run(with(evaluation(out, "10", "0.3"), {"--resume"}));
  EXPECT_EQ(other.code, 2) << other.err;
  EXPECT_NE(other.err.find("eps: the journal's job has"), std::string::npos) << other.err;

  const auto resumed = box.run(with(evaluation(out), {"--resume"}));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("nudge: resuming:"), std::string::npos) << resumed.err;
  expect_same_results(box.path("whole"), out);
  EXPECT_FALSE(fs::exists(out + "/.nudge-journal"));
  EXPECT_FALSE(fs::exists(out + "/summary.incomplete.json"));

  const auto again = box.run(with(evaluation(out), {"--resume"}));
  EXPECT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.out.find("nothing to resume"), std::string::npos) << again.out;
}

TEST_F(RobustnessResume, RandomSigkillsThenResumeGiveTheUninterruptedFolder) {
  CliSandbox box("nudge_rob_kill_");
  ASSERT_EQ(box.run(evaluation(box.path("whole"))).code, 0);
  const std::string out = box.path("killed");
  std::mt19937 rng(20261203);
  int killed = 0;
  for (int i = 0; i < 4; ++i) {
    const int ms = std::uniform_int_distribution<int>(200, 1500)(rng);
    const int status = testing_support::spawn_and_signal(with(evaluation(out), {"--resume"}), box.path("err.txt"),
                                                         SIGKILL, std::chrono::milliseconds(ms));
    killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  }
  EXPECT_GE(killed, 2) << "the evaluation finished before most kills: make it longer";
  const auto r = box.run(with(evaluation(out), {"--resume"}));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_results(box.path("whole"), out);
  EXPECT_TRUE(box.leftovers({".nudge-commit"}).empty());
}

}  // namespace
}  // namespace nudge
