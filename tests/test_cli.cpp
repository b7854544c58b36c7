// The nudge command line as a user meets it: the real binary (NUDGE_BINARY) run in a fresh temporary folder.
//   - Every kind of bad usage or bad input, for every command, exits with 2 and one stderr line "nudge: ..." that
//     names the problem, and leaves no result file (nor any *.tmp.* file) behind.
//   - An end-to-end optimize run with the reference model: results.csv, summary.json, images.npy and grid.png exist
//     and agree with each other (success count, rows, median steps recomputed from the CSV; the .npy header and size).
//   - eval --json, predict --json and a one-epoch train on MNIST (skipped when data/fetch_mnist.sh has not run).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "atomic_file.h"
#include "cli_sandbox.h"
#include "image_io.h"
#include "mnist.h"
#include "model.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;

const std::string kModel = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors";
const std::string kMnist = testing_support::mnist_dir();
// A tiny architecture for the training run: the test checks the file, not the accuracy.
const char* kTinyArch = "1x28x28:conv4k3,relu,pool2,flatten,dense10";

using testing_support::RunOutput;
using testing_support::slurp;

// A private folder: work/ is the command's current directory, capture/ holds its stdout and stderr.
class Sandbox : public testing_support::CliSandbox {
 public:
  Sandbox() : CliSandbox("nudge_cli_") {}

  // Result files and temporaries anywhere under work/.
  std::vector<std::string> leftovers() const {
    return CliSandbox::leftovers({"results.csv", "summary.json", "images.npy", "grid.png"});
  }
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

// Exit code 2, exactly one stderr line "nudge: ..." containing `needle`, no result files left in the sandbox.
void expect_usage_error(const Sandbox& box, const std::vector<std::string>& args, const std::string& needle) {
  SCOPED_TRACE("nudge " + joined(args));
  const RunOutput r = box.run(args);
  EXPECT_EQ(r.code, 2) << "stderr: " << r.err;
  EXPECT_EQ(r.err.rfind("nudge: ", 0), 0u) << "stderr: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: " << r.err;
  EXPECT_TRUE(!r.err.empty() && r.err.back() == '\n') << "stderr: " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in stderr: " << r.err;
  EXPECT_LT(r.err.size(), 300u) << "a message to read, not a dump: " << r.err;
  EXPECT_EQ(joined(box.leftovers()), "") << "files left behind";
}

void write_gray_png(const std::string& path, int side) {
  std::vector<uint8_t> px(static_cast<size_t>(side) * side);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 37 % 256);
  write_png_gray(path, side, side, px);
}

// ---- bad usage and bad input ---------------------------------------------------------------------------------------

TEST(Cli, BadArguments) {
  Sandbox box;
  expect_usage_error(box, {"optimize", "--model", kModel, "--target", "3", "--bogus"}, "--bogus");
  expect_usage_error(box, {"optimize", "--model", kModel, "--target", "3", "--steps", "abc"}, "--steps");
  expect_usage_error(box, {"optimize", "--model", kModel, "--target", "3", "--steps", "-1"}, "--steps");
  expect_usage_error(box, {"train", "--epochs", "0", "--data", kMnist}, "--epochs");
  expect_usage_error(box, {"train", "--batch", "-4", "--data", kMnist}, "--batch");
  expect_usage_error(box, {"train", "--lr", "0", "--data", kMnist}, "--lr");
  expect_usage_error(box, {"eval", "--limit", "x", "--model", kModel}, "--limit");
  expect_usage_error(box, {"predict", "--index", "-3", "--model", kModel}, "--index");
  expect_usage_error(box, {"frobnicate", "--steps", "3"}, "unknown command 'frobnicate'");
  expect_usage_error(box, {}, "subcommand");
  expect_usage_error(box, {"predict", "--model", kModel}, "predict needs image files or --index");
  EXPECT_FALSE(fs::exists(box.path("model.safetensors")));
}

TEST(Cli, MissingAndCorruptModels) {
  Sandbox box;
  std::mt19937 rng(11);
  std::string noise(4096, '\0');
  for (char& c : noise) c = static_cast<char>(rng() & 0xff);
  noise[7] = '\x7f';  // a header length far beyond the file, whatever the other bytes
  write_file_atomically(box.path("noise.safetensors"), noise);
  const std::string real = read_file(kModel);
  write_file_atomically(box.path("short.safetensors"), real.substr(0, 5));
  write_file_atomically(box.path("cut.safetensors"), real.substr(0, 100));
  fs::create_directory(box.work() / "folder.safetensors");
  write_gray_png(box.path("digit.png"), 28);

  const std::vector<std::vector<std::string>> commands = {
      {"optimize", "--target", "3"}, {"predict", "digit.png"}, {"eval", "--data", kMnist}};
  for (const auto& base : commands) {
    auto with = [&](const std::string& model) {
      std::vector<std::string> a = base;
      a.insert(a.end(), {"--model", model});
      return a;
    };
    expect_usage_error(box, with("missing.safetensors"), "missing.safetensors");
    expect_usage_error(box, with("noise.safetensors"), "noise.safetensors");
    expect_usage_error(box, with("short.safetensors"), "shorter than the 8-byte header");
    expect_usage_error(box, with("cut.safetensors"), "truncated");
    expect_usage_error(box, with("folder.safetensors"), "folder");
  }
}

TEST(Cli, BadTargetsAndBalls) {
  Sandbox box;
  auto opt = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"optimize", "--model", kModel, "--count", "2", "--steps", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_usage_error(box, opt({"--target-dist", "0.2,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1"}), "has 9 entries");
  expect_usage_error(box, opt({"--target-dist", "0.6,0.5,-0.1,0,0,0,0,0,0,0"}), "negative");
  expect_usage_error(box, opt({"--target-dist", "0.5,0.4,0,0,0,0,0,0,0,0"}), "sum to 1");
  expect_usage_error(box, opt({"--target-dist", "0.5,x,0,0,0,0,0,0,0,0"}), "--target-dist");
  expect_usage_error(box, opt({"--target", "3", "--norm", "linf", "--eps", "-0.1"}), "--eps must be >= 0");
  expect_usage_error(box, opt({"--target", "3", "--eps", "0.1"}), "--norm");
  expect_usage_error(box, opt({"--target", "12"}), "10 classes");
  expect_usage_error(box, opt({"--target", "next", "--init", "noise"}), "needs true labels");
  expect_usage_error(box, opt({}), "no target");
  expect_usage_error(box, opt({"--target", "3", "--stop-at", "1.5"}), "--stop-at");
  expect_usage_error(box, opt({"--target", "3", "--loss", "hinge"}), "unknown loss");
}

TEST(Cli, UnwritableOutput) {
  Sandbox box;
  write_file_atomically(box.path("plain_file"), "not a folder\n");
  expect_usage_error(box, {"optimize", "--model", kModel, "--target", "3", "--count", "2", "--out", "plain_file/sub"},
                     "plain_file/sub");
  expect_usage_error(box, {"optimize", "--model", kModel, "--target", "3", "--count", "2", "--out", "plain_file"},
                     "not a folder");
  EXPECT_EQ(slurp(box.path("plain_file")), "not a folder\n");
  REQUIRE_MNIST();
  expect_usage_error(box, {"train", "--data", kMnist, "--arch", kTinyArch, "--limit", "10", "--out",
                           "plain_file/sub/m.safetensors"},
                     "plain_file/sub/m.safetensors");
}

TEST(Cli, PredictRejectsBadImages) {
  Sandbox box;
  write_file_atomically(box.path("text.png"), "this is not an image\n");
  write_gray_png(box.path("big.png"), 32);
  expect_usage_error(box, {"predict", "--model", kModel, "text.png"}, "not a PNG or PGM image");
  expect_usage_error(box, {"predict", "--model", kModel, "big.png"}, "32x32");
  expect_usage_error(box, {"predict", "--model", kModel, "absent.png"}, "absent.png");
}

TEST(Cli, PredictIndexPastTheTestSet) {
  REQUIRE_MNIST();
  Sandbox box;
  expect_usage_error(box, {"predict", "--model", kModel, "--data", kMnist, "--index", "10000"}, "--index 10000");
  expect_usage_error(box, {"optimize", "--model", kModel, "--data", kMnist, "--init", "test", "--indices", "3,10000",
                           "--target", "next"},
                     "10000");
}

TEST(Cli, UnknownDevice) {
  Sandbox box;
  write_gray_png(box.path("digit.png"), 28);
  expect_usage_error(box, {"predict", "--model", kModel, "--device", "tpu", "digit.png"}, "unknown device 'tpu'");
  // optimize opens its output files before it makes the backend: they must be removed on the way out.
  expect_usage_error(box, {"optimize", "--model", kModel, "--device", "tpu", "--target", "3", "--count", "2"},
                     "unknown device 'tpu'");
  REQUIRE_MNIST();
  expect_usage_error(box, {"eval", "--model", kModel, "--data", kMnist, "--device", "tpu"}, "unknown device 'tpu'");
  expect_usage_error(box, {"train", "--data", kMnist, "--device", "tpu", "--limit", "10", "--arch", kTinyArch},
                     "unknown device 'tpu'");
  EXPECT_FALSE(fs::exists(box.path("model.safetensors")));
}

TEST(Cli, FusedPathNeedsTheCudaBackend) {
  Sandbox box;
  expect_usage_error(box, {"optimize", "--model", kModel, "--device", "cpu", "--path", "fused", "--target", "3",
                           "--count", "2"},
                     "--path fused needs the CUDA backend");
  expect_usage_error(box, {"optimize", "--model", kModel, "--path", "sideways", "--target", "3", "--count", "2"},
                     "unknown --path 'sideways'");
}

TEST(Cli, DeviceCudaWithoutAGpu) {
  Sandbox box;
  write_gray_png(box.path("digit.png"), 28);
  const RunOutput probe = box.run({"predict", "--model", kModel, "--device", "cuda", "digit.png"});
  if (probe.code == 0) GTEST_SKIP() << "a usable GPU is present: --device cuda succeeds here";
  expect_usage_error(box, {"predict", "--model", kModel, "--device", "cuda", "digit.png"}, "--device cuda");
  expect_usage_error(box, {"optimize", "--model", kModel, "--device", "cuda", "--target", "3", "--count", "2"},
                     "--device cuda");
}

// ---- end to end -------------------------------------------------------------------------------------------------

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string part;
  while (std::getline(ss, part, sep)) out.push_back(part);
  if (!line.empty() && line.back() == sep) out.emplace_back();
  return out;
}

TEST(Cli, OptimizeEndToEnd) {
  Sandbox box;
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", "noise", "--count", "30", "--target", "all",
                         "--steps", "10", "--stop-at", "0.9", "--out", "result", "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path dir = box.work() / "result";

  // results.csv: the header names p0..p9; 30 rows.
  std::istringstream csv(slurp(dir / "results.csv"));
  std::string line;
  ASSERT_TRUE(std::getline(csv, line));
  const std::vector<std::string> header = split(line, ',');
  auto column = [&](const std::string& name) {
    const auto it = std::find(header.begin(), header.end(), name);
    EXPECT_NE(it, header.end()) << "no column " << name << " in " << line;
    return static_cast<size_t>(it - header.begin());
  };
  const size_t c_success = column("success"), c_steps = column("steps_to_success"), c_target = column("target"),
               c_final = column("final_class"), c_source = column("source"), c_p0 = column("p0");
  for (int k = 0; k < 10; ++k) EXPECT_EQ(header[c_p0 + k], "p" + std::to_string(k));
  std::vector<std::vector<std::string>> rows;
  while (std::getline(csv, line)) {
    rows.push_back(split(line, ','));
    ASSERT_EQ(rows.back().size(), header.size()) << line;
  }
  ASSERT_EQ(rows.size(), 30u);
  long successes = 0;
  std::vector<double> steps;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    EXPECT_EQ(row[c_source], "noise:" + std::to_string(i));
    EXPECT_EQ(row[c_target], std::to_string(i % 10));
    std::vector<double> p;
    for (int k = 0; k < 10; ++k) p.push_back(std::stod(row[c_p0 + k]));
    double sum = 0;
    for (double v : p) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-4) << "row " << i;
    EXPECT_EQ(std::stoi(row[c_final]), std::max_element(p.begin(), p.end()) - p.begin()) << "row " << i;
    const bool success = row[c_success] == "1";
    EXPECT_EQ(success, p[i % 10] >= 0.9 - 1e-6) << "row " << i;
    if (success) {
      ++successes;
      steps.push_back(std::stod(row[c_steps]));
    } else {
      EXPECT_EQ(row[c_steps], "") << "row " << i;
    }
  }
  EXPECT_EQ(successes, 30) << "the reference model reaches p >= 0.9 from noise within 10 steps";

  // summary.json agrees with the CSV.
  const nlohmann::json s = nlohmann::json::parse(slurp(dir / "summary.json"));
  EXPECT_EQ(s.at("rows").get<long>(), 30);
  EXPECT_EQ(s.at("successes").get<long>(), successes);
  EXPECT_DOUBLE_EQ(s.at("success_rate").get<double>(), successes / 30.0);
  ASSERT_FALSE(steps.empty());
  std::sort(steps.begin(), steps.end());
  const size_t n = steps.size();
  const double median = n % 2 ? steps[n / 2] : 0.5 * (steps[n / 2 - 1] + steps[n / 2]);
  EXPECT_DOUBLE_EQ(s.at("median_steps_to_success").get<double>(), median);
  EXPECT_EQ(s.at("job").at("steps").get<int>(), 10);
  const auto by_step = s.at("success_rate_by_step").get<std::vector<double>>();
  // One entry per update count up to the most any row took (every row stops at its first success here), not one per
  // step of the budget.
  ASSERT_EQ(by_step.size(), static_cast<size_t>(steps.back()) + 1);
  EXPECT_LE(by_step.size(), 11u);
  EXPECT_DOUBLE_EQ(by_step.back(), successes / 30.0);

  // images.npy: a valid version 1.0 header for float32 (30, 28, 28), then exactly that many floats.
  const std::string npy = slurp(dir / "images.npy");
  ASSERT_GE(npy.size(), 10u);
  EXPECT_EQ(npy.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(npy[6], 1);
  EXPECT_EQ(npy[7], 0);
  const size_t header_len = static_cast<uint8_t>(npy[8]) | static_cast<size_t>(static_cast<uint8_t>(npy[9])) << 8;
  ASSERT_LE(10 + header_len, npy.size());
  const std::string dict = npy.substr(10, header_len);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_EQ(dict.back(), '\n');
  EXPECT_NE(dict.find("'descr': '<f4'"), std::string::npos) << dict;
  EXPECT_NE(dict.find("'fortran_order': False"), std::string::npos) << dict;
  EXPECT_NE(dict.find("'shape': (30, 28, 28)"), std::string::npos) << dict;
  EXPECT_EQ(npy.size(), 10 + header_len + size_t{30} * 28 * 28 * sizeof(float));
  std::vector<float> pixels(size_t{30} * 28 * 28);
  std::memcpy(pixels.data(), npy.data() + 10 + header_len, pixels.size() * sizeof(float));
  EXPECT_TRUE(std::all_of(pixels.begin(), pixels.end(), [](float v) { return v >= 0.0f && v <= 1.0f; }));

  // grid.png: a readable picture.
  const GrayImage grid = read_png((dir / "grid.png").string());
  EXPECT_GT(grid.width, 28);
  EXPECT_GT(grid.height, 28);

  // Nothing half-written left over.
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Cli, EvalJson) {
  REQUIRE_MNIST();
  Sandbox box;
  const RunOutput r = box.run({"eval", "--model", kModel, "--data", kMnist, "--json", "--limit", "500"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.is_object());
  const double acc = j.at("accuracy").get<double>();
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  EXPECT_EQ(j.at("count").get<int>(), 500);
  EXPECT_GT(acc, 0.9) << "the reference model";
}

TEST(Cli, PredictJsonIndex307) {
  REQUIRE_MNIST();
  Sandbox box;
  const RunOutput r = box.run({"predict", "--model", kModel, "--data", kMnist, "--index", "307", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("class").get<int>(), 7);
  EXPECT_EQ(j.at("label").get<int>(), 7);
  EXPECT_EQ(j.at("probabilities").size(), 10u);
}

TEST(Cli, TrainOneEpochWritesALoadableModel) {
  REQUIRE_MNIST();
  Sandbox box;
  const std::string out = box.path("models/m.safetensors");
  fs::create_directory(box.work() / "models");
  const RunOutput r = box.run({"train", "--data", kMnist, "--arch", kTinyArch, "--epochs", "1", "--limit", "500", "--out", out});
  ASSERT_EQ(r.code, 0) << r.err;
  const Model m = Model::load(out);
  EXPECT_EQ(m.arch.to_string(), Architecture::parse(kTinyArch).to_string());
  EXPECT_EQ(m.params.size(), m.arch.params().size());
  // The model and its training log, nothing else (no temporaries left behind).
  for (const auto& e : fs::directory_iterator(box.work() / "models")) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name == "m.safetensors" || name == "m.train.json") << "stray file " << e.path();
  }
  EXPECT_NE(slurp(box.path("models/m.train.json")).find("\"epochs\""), std::string::npos);
}

// A model with bn and dropout: nudge train keeps them in the file; eval reports the file's architecture and the
// folded one it runs; predict agrees with eval's model. The bad uses exit 2 naming the token or the option.
TEST(Cli, TrainAndEvalABatchNormModel) {
  REQUIRE_MNIST();
  Sandbox box;
  const char* arch = "1x28x28:conv4k3,bn,relu,pool2,flatten,dense16,bn,relu,dropout0.5,dense10";
  const RunOutput r = box.run({"train", "--data", kMnist, "--arch", arch, "--epochs", "1", "--limit", "300",
                               "--device", "cpu", "--out", box.path("bn.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Model::load(box.path("bn.safetensors")).arch.to_string(), arch);
  const RunOutput e = box.run({"eval", "--model", box.path("bn.safetensors"), "--data", kMnist, "--limit", "100"});
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.out.find(std::string("architecture: ") + arch), std::string::npos) << e.out;
  EXPECT_NE(e.out.find("runs as: 1x28x28:conv4k3,relu,pool2,flatten,dense16,relu,dense10 (bn folded"), std::string::npos)
      << e.out;
  write_gray_png(box.path("digit.png"), 28);
  EXPECT_EQ(box.run({"predict", "--model", box.path("bn.safetensors"), "digit.png"}).code, 0);

  expect_usage_error(box, {"train", "--data", kMnist, "--arch", "1x28x28:conv4k3,relu,bn,flatten,dense10", "--limit", "10",
                           "--out", box.path("x.safetensors")}, "'bn' must come right after a conv or dense layer");
  expect_usage_error(box, {"train", "--data", kMnist, "--arch", "1x28x28:conv4k3,flatten,dropout1.5,dense10", "--limit",
                           "10", "--out", box.path("x.safetensors")}, "'dropout1.5' should be dropoutP");
  expect_usage_error(box, {"train", "--data", kMnist, "--arch", arch, "--limit", "40", "--device", "cpu", "--adversarial",
                           "trades", "--check-count", "0", "--out", box.path("x.safetensors")},
                     "--adversarial trades cannot train a model with bn layers");
}

}  // namespace
}  // namespace nudge
