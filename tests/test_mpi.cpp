// One job across MPI ranks (issue 14): `mpirun -np 2` and `-np 3` on the CPU write the folder a single process
// writes, byte for byte (each rank computes its part, rank 0 writes everything); a rank stopped mid-job fails the
// whole job with that rank's message, leaves no complete-looking folder, and --resume under mpirun finishes it to
// the same bytes; a resume with another rank count, --shard under mpirun and commands that do not share their work
// are refused with exit 2 and one message.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "cli_sandbox.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;
using testing_support::CliSandbox;
using testing_support::slurp;

const std::string kModel = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors";
const std::string kData = std::string(NUDGE_SOURCE_DIR) + "/data/mnist";
const std::vector<std::string> kResultFiles = {"results.csv", "images.npy", "grid.png", "summary.json"};

#ifdef NUDGE_MPIEXEC
// This machine has two cores: more ranks than cores needs --oversubscribe; CI runs as root, which Open MPI refuses
// unless told.
std::string mpirun(int ranks) {
  // In a sanitizer build: what Open MPI keeps until exit is not nudge's leak (the file names the libraries).
  ::setenv("LSAN_OPTIONS", "fast_unwind_on_malloc=0:suppressions=" NUDGE_SOURCE_DIR "/tests/lsan_mpi.supp", 0);
  if (::geteuid() == 0) {
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  }
  return std::string(NUDGE_MPIEXEC) + " --oversubscribe -np " + std::to_string(ranks);
}
#define SKIP_WITHOUT_MPI() (void)0
#else
std::string mpirun(int) { return ""; }
#define SKIP_WITHOUT_MPI() GTEST_SKIP() << "nudge was built without MPI (install libopenmpi-dev and reconfigure)"
#endif

// Rows from the test set with several entries per row (restarts in an eps-ball) and a row count that no rank count
// here divides, so the parts differ in size.
std::vector<std::string> attack_job(const std::string& out) {
  return {"optimize", "--model", kModel, "--data", kData, "--init", "test", "--count", "101", "--target", "other",
          "--eps", "0.1", "--norm", "linf", "--random-start", "--restarts", "2", "--steps", "8", "--lr", "0.02",
          "--optimizer", "sign", "--chunk", "64", "--device", "cpu", "--quiet", "--out", out};
}

// Long enough (tens of seconds on one core) that a signal lands mid-job, in chunks small enough that a part holds
// many journal blocks.
std::vector<std::string> long_job(const std::string& out) {
  return {"optimize", "--model", kModel, "--init", "noise", "--count", "3000", "--target", "all", "--steps", "20",
          "--chunk", "100", "--device", "cpu", "--quiet", "--out", out};
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

// The pid of the nudge process that is rank `rank` of an MPI job writing to `out`, or -1 (read from /proc: the
// process's command line names the folder, its environment its rank).
int rank_pid(const std::string& out, int rank) {
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = slurp(e.path() / "cmdline");
    if (cmd.find(NUDGE_BINARY) != 0 || cmd.find(out) == std::string::npos) continue;
    std::string env = slurp(e.path() / "environ");
    for (size_t at = 0; at < env.size();) {
      const size_t end = env.find('\0', at);
      if (env.compare(at, end - at, want) == 0) return std::stoi(name);
      if (end == std::string::npos) break;
      at = end + 1;
    }
  }
  return -1;
}

TEST(Mpi, TwoAndThreeRanksWriteTheSingleProcessFolderByteForByte) {
  SKIP_WITHOUT_MPI();
  CliSandbox box("nudge_mpi_");
  const auto single = box.run(attack_job(box.path("single")));
  ASSERT_EQ(single.code, 0) << single.err;
  for (int ranks : {2, 3}) {
    const std::string out = box.path("ranks" + std::to_string(ranks));
    const auto r = box.run_launched(mpirun(ranks), attack_job(out));
    ASSERT_EQ(r.code, 0) << r.err;
    expect_same_results(box.path("single"), out);
    EXPECT_FALSE(fs::exists(out + "/.nudge-journal")) << "the journal outlived the commit";
    const std::string run_json = slurp(out + "/run.json");
    EXPECT_NE(run_json.find("\"rank\": " + std::to_string(ranks - 1)), std::string::npos) << run_json;
    // One summary line, from rank 0.
    EXPECT_EQ(r.out.find("101 rows"), r.out.rfind("101 rows")) << r.out;
  }
}

TEST(Mpi, RobustnessOnTwoAndThreeRanksWritesTheSingleProcessFolder) {
  SKIP_WITHOUT_MPI();
  CliSandbox box("nudge_mpi_rob_");
  const auto eval = [&](const std::string& out) {
    return std::vector<std::string>{"robustness", "--model", std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn_robust.safetensors",
                                    "--data", kData, "--count", "31", "--eps", "0.2,0.3", "--attacks", "standard",
                                    "--apgd-iters", "10", "--fab-iters", "10", "--square-queries", "100", "--targets", "3",
                                    "--chunk", "8", "--device", "cpu", "--quiet", "--out", out};
  };
  const auto single = box.run(eval(box.path("single")));
  ASSERT_EQ(single.code, 0) << single.err;
  for (int ranks : {2, 3}) {
    const std::string out = box.path("ranks" + std::to_string(ranks));
    const auto r = box.run_launched(mpirun(ranks), eval(out));
    ASSERT_EQ(r.code, 0) << r.err;
    for (const char* f : {"results.csv", "images.npy", "robustness.png", "summary.json"}) {
      const std::string a = slurp(box.path("single") + "/" + f), b = slurp(out + "/" + f);
      EXPECT_FALSE(a.empty()) << f;
      EXPECT_TRUE(a == b) << f << " differs between one process and " << ranks << " ranks";
    }
  }
}

TEST(Mpi, AStoppedRankFailsTheJobWithItsMessageAndResumeFinishesItByteForByte) {
  SKIP_WITHOUT_MPI();
  CliSandbox box("nudge_mpi_stop_");
  const std::string out = box.path("stopped");
  auto job = std::async(std::launch::async, [&] { return box.run_launched(mpirun(2), long_job(out)); });
  // SIGTERM to rank 1 once it has sent some rows (its part's journal has grown past its header).
  const std::string part1 = out + "/.nudge-journal/part-1-of-2.nudge";
  int pid = -1;
  for (int i = 0; i < 600; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::error_code ec;
    if (fs::exists(part1) && fs::file_size(part1, ec) > 200000 && (pid = rank_pid(out, 1)) > 0) break;
  }
  ASSERT_GT(pid, 0) << "rank 1 never showed up, or its rows never reached rank 0";
  ::kill(pid, SIGTERM);
  const auto r = job.get();
  EXPECT_EQ(r.code, 143) << r.err;
  EXPECT_NE(r.err.find("nudge: rank 1 of 2: interrupted by SIGTERM"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out + "/summary.json")) << "a failed job left a folder that looks complete";
  EXPECT_FALSE(fs::exists(out + "/results.csv"));
  EXPECT_TRUE(fs::exists(out + "/summary.incomplete.json"));

  // Another rank count is refused: the parts would not line up.
  const auto three = box.run_launched(mpirun(3), with(long_job(out), {"--resume"}));
  EXPECT_EQ(three.code, 2) << three.err;
  EXPECT_NE(three.err.find("was written as 2 parts"), std::string::npos) << three.err;

  const auto resumed = box.run_launched(mpirun(2), with(long_job(out), {"--resume"}));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("nudge: resuming:"), std::string::npos) << resumed.err;
  const auto single = box.run(long_job(box.path("single")));
  ASSERT_EQ(single.code, 0) << single.err;
  expect_same_results(box.path("single"), out);
  EXPECT_FALSE(fs::exists(out + "/summary.incomplete.json"));
}

TEST(Mpi, ARankWhoseModelFileDiffersFromRankZerosFailsTheJob) {
  SKIP_WITHOUT_MPI();
  CliSandbox box("nudge_mpi_inputs_");
  // Two "nodes": each rank runs in its own folder, where the same relative path holds another model.
  fs::create_directories(box.path("a"));
  fs::create_directories(box.path("b"));
  fs::copy_file(kModel, box.path("a/m.safetensors"));
  fs::copy_file(std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn_seed2.safetensors", box.path("b/m.safetensors"));
  const std::vector<std::string> args = {"optimize", "--model", "m.safetensors", "--init", "noise", "--count", "4",
                                         "--target", "all", "--quiet", "--out", box.path("out")};
  std::string first = testing_support::quote(NUDGE_BINARY);
  for (const std::string& a : args) first += " " + testing_support::quote(a);
  const std::string launcher = mpirun(1) + " -wdir " + testing_support::quote(box.path("a")) + " " + first +
                               " : -np 1 -wdir " + testing_support::quote(box.path("b"));
  const auto r = box.run_launched(launcher, args);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("nudge: rank 1 of 2: its input files differ from rank 0's (m.safetensors=fnv1a64:"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(box.path("out/summary.json")));
}

TEST(Mpi, RefusalsExitTwoWithOneMessage) {
  SKIP_WITHOUT_MPI();
  CliSandbox box("nudge_mpi_refuse_");
  const auto count = [](const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  const auto missing = box.run_launched(mpirun(2), {"optimize", "--model", box.path("absent.safetensors"), "--init",
                                                    "noise", "--count", "4", "--target", "all", "--out", box.path("o")});
  EXPECT_EQ(missing.code, 2);
  EXPECT_EQ(count(missing.err, "nudge: cannot read"), 1) << missing.err;
  EXPECT_FALSE(fs::exists(box.path("o"))) << "a refused job left its output folder";

  const auto shard = box.run_launched(mpirun(2), with(attack_job(box.path("s")), {"--shard", "0/2"}));
  EXPECT_EQ(shard.code, 2);
  EXPECT_EQ(count(shard.err, "do not mix"), 1) << shard.err;

  const auto train = box.run_launched(mpirun(2), {"train", "--data", kData, "--limit", "64", "--epochs", "1", "--out",
                                                  box.path("m.safetensors")});
  EXPECT_EQ(train.code, 2);
  EXPECT_EQ(count(train.err, "runs in one process"), 1) << train.err;
  EXPECT_FALSE(fs::exists(box.path("m.safetensors")));
}

}  // namespace
}  // namespace nudge
