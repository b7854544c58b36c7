// One writer per output folder (host/report/output_lock.h): a second job on a held folder is refused with exit 2
// and the holder's name, the holder's files stay as they were, the lock goes with its holder, and the temporary
// files of dead jobs are removed when a job takes the folder.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "cli_sandbox.h"
#include "errors.h"
#include "output_lock.h"

namespace nudge {
namespace {

using testing_support::CliSandbox;
using testing_support::RunOutput;
using testing_support::slurp;

const std::string kModel = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors";

RunOutput small_job(const CliSandbox& box, const std::string& out) {
  return box.run({"optimize", "--model", kModel, "--init", "noise", "--count", "4", "--target", "3", "--steps", "2",
                  "--quiet", "--out", out});
}

TEST(OutputLock, SecondHolderInOneProcessIsRefusedAndTheLockGoesWithItsHolder) {
  CliSandbox box("nudge_lock_");
  const std::string dir = box.work().string();
  {
    const OutputLock first(dir, "nudge optimize --out first");
    try {
      const OutputLock second(dir, "nudge optimize --out second");
      FAIL() << "a second lock on the same folder was granted";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("is in use by another nudge job"), std::string::npos) << msg;
      EXPECT_NE(msg.find("pid " + std::to_string(::getpid())), std::string::npos) << msg;
      EXPECT_NE(msg.find("--out first"), std::string::npos) << msg;
    }
  }
  EXPECT_NO_THROW(OutputLock(dir, "nudge optimize --out third")) << "released when its holder went";
}

TEST(OutputLock, AJobOnAHeldFolderExitsTwoNamingTheHolderAndTouchesNothing) {
  CliSandbox box("nudge_lock_");
  ASSERT_EQ(small_job(box, "out").code, 0);
  const std::string before = slurp(box.path("out/results.csv")), npy = slurp(box.path("out/images.npy"));
  ASSERT_FALSE(before.empty());
  {
    const OutputLock held(box.path("out"), "the first job");
    const RunOutput r = small_job(box, "out");
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("is in use by another nudge job (pid " + std::to_string(::getpid())), std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("the first job"), std::string::npos) << r.err;
    EXPECT_EQ(slurp(box.path("out/results.csv")), before);
    EXPECT_EQ(slurp(box.path("out/images.npy")), npy);
  }
  EXPECT_EQ(small_job(box, "out").code, 0) << "free again once the holder is gone";
}

TEST(OutputLock, TemporaryFilesOfDeadJobsAreRemovedWhenAJobTakesTheFolder) {
  CliSandbox box("nudge_lock_");
  std::filesystem::create_directories(box.path("out"));
  for (const char* name : {"results.csv.tmp.123456", "images.npy.tmp.99", "grid.png.tmp.7"})
    std::ofstream(box.path(std::string("out/") + name)) << "half a file";
  std::ofstream(box.path("out/notes.tmp.txt")) << "not ours";
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", "noise", "--count", "4", "--target", "3",
                               "--steps", "2", "--out", "out"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("removed 3 temporary files of an earlier, interrupted job"), std::string::npos) << r.err;
  for (const char* name : {"results.csv.tmp.123456", "images.npy.tmp.99", "grid.png.tmp.7"})
    EXPECT_FALSE(std::filesystem::exists(box.path(std::string("out/") + name))) << name;
  EXPECT_TRUE(std::filesystem::exists(box.path("out/notes.tmp.txt"))) << "only NAME.tmp.<pid> files are ours";
}

// --path fused on the CPU is refused after the folder is made and locked: the folders the job made go again, lock
// file and all.
TEST(OutputLock, AFailedJobLeavesNoFolderBehindForItsLock) {
  CliSandbox box("nudge_lock_");
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", "noise", "--count", "4", "--target", "3",
                               "--steps", "2", "--device", "cpu", "--path", "fused", "--out", "new/out"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--path fused needs the CUDA backend"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(box.path("new"))) << r.err;
}

}  // namespace
}  // namespace nudge
