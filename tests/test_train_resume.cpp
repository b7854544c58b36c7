// nudge train survives interruption (cli/cmd_train.cpp, train/checkpoint.h): a run stopped after an epoch, by
// SIGINT or by SIGKILL, continues with --resume to a model file byte-identical to an uninterrupted run's, for
// standard and adversarial training (the guard's kept model and collapse included); a resume whose options differ,
// or with no checkpoint, is refused naming why; two jobs on one --out are refused. Tiny runs (a 6,810-parameter
// network, a few hundred images): every test takes well under a few seconds on 2 cores.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "atomic_file.h"
#include "cli_sandbox.h"
#include "file_lock.h"
#include "mnist.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;
using testing_support::CliSandbox;
using testing_support::RunOutput;
using testing_support::slurp;

const char* kTinyArch = "1x28x28:conv4k3,relu,pool2,flatten,dense10";

// A short job writing `out` with the options `extra`; --limit 300 and --epochs 3 unless `extra` sets them. On the CPU
// backend, whose training is bit-reproducible (cuDNN's may choose other algorithms from run to run).
std::vector<std::string> train_args(const std::string& out, const std::vector<std::string>& extra) {
  std::vector<std::string> a{"train", "--data", testing_support::mnist_dir(), "--arch", kTinyArch, "--device", "cpu",
                             "--out", out};
  for (const auto& [flag, value] : {std::pair<const char*, const char*>{"--limit", "300"}, {"--epochs", "3"}})
    if (std::find(extra.begin(), extra.end(), flag) == extra.end()) a.insert(a.end(), {flag, value});
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// The environment prefix that makes the run raise SIGINT in itself right after epoch k's checkpoint.
std::string interrupt_after(int k) { return "export NUDGE_TEST_INTERRUPT_AFTER_EPOCH=" + std::to_string(k) + ";"; }

// Files under the sandbox's work/ that a finished job must not leave: temporaries, checkpoints, lock files.
std::vector<std::string> debris(const CliSandbox& box) {
  std::vector<std::string> found;
  for (const auto& e : fs::recursive_directory_iterator(box.work())) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp.") != std::string::npos || name.find(".checkpoint") != std::string::npos ||
        name.find(".lock") != std::string::npos)
      found.push_back(name);
  }
  return found;
}

// Runs `extra` uninterrupted into ref.safetensors, then, for each k, interrupted after epoch k into k.safetensors and
// resumed: each resumed model file must be the same bytes as the reference.
void expect_resume_matches(const std::vector<std::string>& extra, const std::vector<int>& ks, int epochs = 3) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_resume_");
  const std::vector<std::string> e = with(extra, {"--epochs", std::to_string(epochs)});
  const std::string ref = box.path("ref.safetensors");
  const RunOutput full = box.run(train_args(ref, e));
  ASSERT_EQ(full.code, 0) << full.err;
  const std::string want = slurp(ref);
  ASSERT_FALSE(want.empty());
  for (int k : ks) {
    SCOPED_TRACE("interrupted after epoch " + std::to_string(k));
    const std::string out = box.path(std::to_string(k) + ".safetensors");
    const RunOutput stopped = box.run(train_args(out, e), "", interrupt_after(k));
    ASSERT_EQ(stopped.code, 130) << stopped.err;
    EXPECT_NE(stopped.err.find("epoch " + std::to_string(k) + " of " + std::to_string(epochs) + " is saved in " + out +
                               ".checkpoint"),
              std::string::npos)
        << stopped.err;
    EXPECT_NE(stopped.err.find("run the same command with --resume"), std::string::npos) << stopped.err;
    EXPECT_FALSE(fs::exists(out)) << "an interrupted run writes no model";
    EXPECT_TRUE(fs::exists(out + ".checkpoint"));

    const RunOutput resumed = box.run(with(train_args(out, e), {"--resume"}));
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    EXPECT_NE(resumed.err.find("resuming from " + out + ".checkpoint after epoch " + std::to_string(k)),
              std::string::npos)
        << resumed.err;
    const std::string got = slurp(out);
    EXPECT_TRUE(got == want) << "the resumed model differs from the uninterrupted run's (" << got.size() << " vs "
                             << want.size() << " bytes)";
    const std::string log = slurp(box.path(std::to_string(k) + ".train.json"));
    EXPECT_NE(log.find("\"resumed_after_epochs\": [\n    " + std::to_string(k)), std::string::npos) << log;
  }
  EXPECT_EQ(debris(box), std::vector<std::string>{}) << "the checkpoint goes when the run finishes";
}

TEST(TrainResume, StandardTrainingResumedAfterEpoch1Or2IsByteIdentical) {
  expect_resume_matches({"--lr-schedule", "cyclic", "--batch", "40"}, {1, 2});
}

// PGD-AT with the guard's held-out check (its kept model travels in the checkpoint).
TEST(TrainResume, PgdTrainingWithTheGuardsCheckResumedIsByteIdentical) {
  expect_resume_matches({"--adversarial", "pgd", "--eps", "0.1", "--adv-steps", "2", "--eps-ramp", "1",
                         "--check-count", "50", "--check-steps", "3"},
                        {1});
}

TEST(TrainResume, TradesTrainingResumedIsByteIdentical) {
  expect_resume_matches({"--adversarial", "trades", "--eps", "0.1", "--adv-steps", "2", "--check-count", "0"}, {2});
}

// Fast-AT at a high lr with --collapse-drop 0: on 2 threads the guard stops at epoch 5 and keeps epoch 4's model
// (measured 2026-12-02). Stopped after epoch 3 the resume must reach the same verdict; stopped after epoch 5, the
// collapsed checkpoint is all that is left, and the resume writes the kept model without training.
TEST(TrainResume, FastAtWhoseGuardStopsResumesToTheSameKeptModel) {
  expect_resume_matches({"--adversarial", "fgsm", "--eps", "0.1", "--lr", "0.03", "--limit", "200", "--check-count",
                         "50", "--check-steps", "3", "--collapse-drop", "0"},
                        {3, 5}, 6);
}

// A real SIGKILL, once the first checkpoint is on disk: no handler runs, the temporaries and the lock file stay, and
// the resumed run (which clears them) still ends byte-identical.
TEST(TrainResume, KilledWithSigkillAfterACheckpointResumesByteIdentical) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_resume_");
  const std::vector<std::string> e{"--limit", "600", "--epochs", "10"};
  const std::string ref = box.path("ref.safetensors"), out = box.path("m.safetensors");
  ASSERT_EQ(box.run(train_args(ref, e)).code, 0);
  const int pid = testing_support::spawn_nudge(train_args(out, e), box.path("err.txt"));
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!fs::exists(out + ".checkpoint") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run ended before it was killed: " << slurp(box.path("err.txt"));
  ASSERT_TRUE(fs::exists(out + ".checkpoint"));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(fs::exists(out + ".tmp." + std::to_string(pid))) << "the model's temporary, opened before training";
  EXPECT_TRUE(fs::exists(out + ".lock"));

  const RunOutput resumed = box.run(with(train_args(out, e), {"--resume"}));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_TRUE(slurp(ref) == slurp(out)) << "the resumed model differs from the uninterrupted run's";
  EXPECT_EQ(debris(box), std::vector<std::string>{}) << "the killed run's temporaries are cleared by the next";
}

// An interrupted run's checkpoint and the one-line refusals of a --resume that cannot use it; the checkpoint stays.
class ResumeRefusal : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing_support::have_mnist()) GTEST_SKIP() << "MNIST not fetched: run data/fetch_mnist.sh";
    ASSERT_EQ(box_.run(train_args(out_, {}), "", interrupt_after(1)).code, 130);
    saved_ = slurp(out_ + ".checkpoint");
    ASSERT_FALSE(saved_.empty());
  }
  void expect_refused(const std::vector<std::string>& extra, const std::string& needle) {
    const RunOutput r = box_.run(with(train_args(out_, extra), {"--resume"}));
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
    EXPECT_TRUE(slurp(out_ + ".checkpoint") == saved_) << "a refused resume leaves the checkpoint as it was";
    EXPECT_FALSE(fs::exists(out_));
  }
  CliSandbox box_{"nudge_resume_"};
  std::string out_ = box_.path("m.safetensors"), saved_;
};

TEST_F(ResumeRefusal, AChangedOptionIsNamedWithBothValues) {
  expect_refused({"--epochs", "4"}, "nudge: --resume: the checkpoint was made with --epochs 3, this command says 4");
  expect_refused({"--seed", "9"}, "the checkpoint was made with --seed 1, this command says 9");
  expect_refused({"--limit", "200", "--lr", "0.002"},
                 "the checkpoint was made with --lr 0.001, this command says 0.002 (and 1 more: --limit)");
  expect_refused({"--adversarial", "pgd"}, "the checkpoint was made with --adversarial none, this command says pgd");
}

TEST_F(ResumeRefusal, ADamagedCheckpointIsRefusedAsBadInput) {
  write_file_atomically(out_ + ".checkpoint", saved_.substr(0, saved_.size() / 2));
  const RunOutput r = box_.run(with(train_args(out_, {}), {"--resume"}));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find(out_ + ".checkpoint"), std::string::npos) << r.err;
}

TEST(TrainResume, ResumeWithoutACheckpointIsRefused) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_resume_");
  const RunOutput r = box.run(with(train_args(box.path("m.safetensors"), {}), {"--resume"}));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("nudge: --resume: there is no checkpoint " + box.path("m.safetensors.checkpoint")),
            std::string::npos)
      << r.err;
  EXPECT_EQ(debris(box), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(box.path("m.safetensors")));
}

// Without --resume an earlier checkpoint is announced and replaced: the run is the uninterrupted one.
TEST(TrainResume, AFreshRunReplacesAnEarlierCheckpoint) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_resume_");
  const std::string ref = box.path("ref.safetensors"), out = box.path("m.safetensors");
  ASSERT_EQ(box.run(train_args(ref, {})).code, 0);
  ASSERT_EQ(box.run(train_args(out, {"--seed", "5"}), "", interrupt_after(1)).code, 130);
  const RunOutput r = box.run(train_args(out, {}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(out + ".checkpoint holds an earlier, interrupted run; this run starts afresh"),
            std::string::npos)
      << r.err;
  EXPECT_TRUE(slurp(ref) == slurp(out));
  EXPECT_EQ(debris(box), std::vector<std::string>{});
}

// The lock as another process would hold it: the job is refused before it writes anything.
TEST(TrainResume, ASecondWriterOfTheSameOutIsRefusedNamingTheHolder) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_resume_");
  const std::string out = box.path("m.safetensors");
  {
    const FileLock held(out + ".lock", "--out " + out, "the first train job", true);
    const RunOutput r = box.run(train_args(out, {}));
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("nudge: --out " + out + " is in use by another nudge job (pid " + std::to_string(::getpid())),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("the first train job"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out + ".checkpoint"));
  }
  EXPECT_EQ(box.run(train_args(out, {})).code, 0) << "free again once the holder is gone";
}

// Two real jobs: the second is refused while the first runs; the first, stopped by SIGTERM, keeps its checkpoint.
TEST(TrainResume, TwoTrainJobsOnOneOutTheSecondIsRefusedAndSigtermKeepsTheFirstsCheckpoint) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_resume_");
  const std::string out = box.path("m.safetensors");
  const std::vector<std::string> longer = train_args(out, {"--epochs", "1000"});
  const int pid = testing_support::spawn_nudge(longer, box.path("err.txt"));
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!fs::exists(out + ".checkpoint") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const RunOutput second = box.run(train_args(out, {}));
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string err = slurp(box.path("err.txt"));
  EXPECT_EQ(second.code, 2) << second.err;
  EXPECT_NE(second.err.find("is in use by another nudge job (pid " + std::to_string(pid)), std::string::npos)
      << second.err;
  ASSERT_TRUE(WIFEXITED(status)) << err;
  EXPECT_EQ(WEXITSTATUS(status), 143) << err;
  EXPECT_NE(err.find("interrupted by SIGTERM"), std::string::npos) << err;
  EXPECT_NE(err.find("to continue, run the same command with --resume"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(out + ".checkpoint"));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".lock")) << "the lock file goes with its job";
}

}  // namespace
}  // namespace nudge
