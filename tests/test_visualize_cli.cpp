// nudge visualize as a user meets it: the real binary (NUDGE_BINARY) on a tiny run.
//   - With its defaults, run from the repository root (where the default model, ensemble and judge paths resolve):
//     exit 0; classes.png is the 10 x K grid (its size follows write_image_grid's layout, and row c, column k shows
//     image k * 10 + c of images.npy, the prototype of class c); results.csv has one row per prototype aimed at
//     i mod 10; summary.json names both default models and, when the judge file exists, reports judge_agreement.
//   - The strokes recipe (noise starts, pixel priors; a given flag overrides the recipe's value).
//   - A --pca run gives the same images in chunks of 7 as in one chunk.
//   - With explicit --model / --judge / --pca and K = 2, from another folder.
//   - Bad input (--per-class 0 or negative, a judge that is also an optimized-against model, also under another
//     spelling of its path, an unknown judge file, --steps 0, --prior-decay > 1, a grid too large to draw, an unknown
//     recipe, a missing or invalid basis, --init pca without one, --pca with --sigmoid, a negative weight) exits 2
//     with one stderr line "nudge: ..." and leaves no result file behind.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "cli_sandbox.h"
#include "image_io.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;

const std::string kSource = NUDGE_SOURCE_DIR;
const std::string kModel = kSource + "/data/models/mnist_cnn.safetensors";
const std::string kModel2 = kSource + "/data/models/mnist_cnn_seed2.safetensors";
const std::string kJudge = kSource + "/data/models/judge_mlp.safetensors";

using testing_support::RunOutput;
using testing_support::slurp;

// box.run(args, cwd) runs nudge in folder cwd (default: the sandbox's work/).
class Sandbox : public testing_support::CliSandbox {
 public:
  Sandbox() : CliSandbox("nudge_viz_") {}

  std::vector<std::string> leftovers() const {
    return CliSandbox::leftovers({"results.csv", "summary.json", "images.npy", "grid.png", "classes.png"});
  }
};

// images.npy: a version-1 header, then little-endian float32 [n, 28, 28].
std::vector<float> read_npy_f32(const fs::path& p, std::string* header) {
  const std::string bytes = slurp(p);
  EXPECT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.compare(0, 6, "\x93NUMPY"), 0);
  const size_t hl = static_cast<unsigned char>(bytes[8]) | static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8;
  *header = bytes.substr(10, hl);
  std::vector<float> v((bytes.size() - 10 - hl) / 4);
  std::memcpy(v.data(), bytes.data() + 10 + hl, v.size() * 4);
  return v;
}

int count_lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

// Checks the files of a finished run with K prototypes per class at grid scale `scale`.
void check_outputs(const fs::path& dir, int K, int scale, const std::string& source = "pca:") {
  for (const char* f : {"classes.png", "results.csv", "summary.json", "images.npy", "grid.png"})
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  // results.csv: a header and one row per prototype, image i aimed at class i mod 10.
  std::istringstream csv(slurp(dir / "results.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line.rfind("index,source,label,target,", 0), 0u) << line;
  int rows = 0;
  while (std::getline(csv, line)) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    for (std::string c; std::getline(ls, c, ',');) cells.push_back(c);
    ASSERT_GE(cells.size(), 4u);
    EXPECT_EQ(cells[0], std::to_string(rows));
    EXPECT_EQ(cells[1], source + std::to_string(rows));
    EXPECT_EQ(cells[3], std::to_string(rows % 10));
    ++rows;
  }
  EXPECT_EQ(rows, 10 * K);

  std::string header;
  const std::vector<float> images = read_npy_f32(dir / "images.npy", &header);
  ASSERT_EQ(images.size(), static_cast<size_t>(10 * K) * 784) << header;

  // classes.png: write_image_grid's layout with 10 rows of K, labels "0".."9" (one character).
  const GrayImage grid = read_png((dir / "classes.png").string());
  const int t = std::max(1, scale / 3), label_w = 4 + 6 * t, tile = 28 * scale;
  EXPECT_EQ(grid.width, label_w + K * tile + (K + 1) * 2);
  EXPECT_EQ(grid.height, 10 * tile + 11 * 2);
  // Row c, column k is image k * 10 + c (gray, rounded to 8 bits).
  int mismatched = 0;
  for (int c = 0; c < 10; ++c)
    for (int k = 0; k < K; ++k) {
      const float* img = images.data() + static_cast<size_t>(k * 10 + c) * 784;
      const int x0 = label_w + 2 + k * (tile + 2), y0 = 2 + c * (tile + 2);
      for (int i = 0; i < 28; ++i)
        for (int j = 0; j < 28; ++j) {
          const float want = std::lround(std::clamp(img[i * 28 + j], 0.0f, 1.0f) * 255.0f) / 255.0f;
          const float got = grid.pixels[static_cast<size_t>(y0 + i * scale) * grid.width + x0 + j * scale];
          mismatched += std::fabs(want - got) > 0.5f / 255.0f;
        }
    }
  EXPECT_EQ(mismatched, 0) << "classes.png cells are not images k * 10 + c";
}

TEST(VisualizeCli, DefaultsEndToEnd) {
  Sandbox box;
  const fs::path out = box.work() / "viz";
  // From the repository root, so that the default model paths (data/models/...) resolve; the output goes elsewhere.
  const RunOutput r = box.run({"visualize", "--per-class", "1", "--steps", "5", "--out", out.string(), "--quiet"}, kSource);
  ASSERT_EQ(r.code, 0) << r.err;
  check_outputs(out, 1, 3);
  EXPECT_NE(r.out.find((out / "classes.png").string()), std::string::npos) << "says where classes.png is: " << r.out;

  const nlohmann::json s = nlohmann::json::parse(slurp(out / "summary.json"));
  EXPECT_EQ(s["rows"].get<long>(), 10);
  const nlohmann::json& spec = s["job"].is_object() ? s["job"] : s;
  ASSERT_TRUE(spec.contains("models")) << s.dump();
  EXPECT_EQ(spec["models"].size(), 3u) << "the default is the three-CNN ensemble, the robust model included";
  EXPECT_EQ(spec["per_class"].get<int>(), 1);
  EXPECT_EQ(spec["recipe"].get<std::string>(), "pca");
  EXPECT_EQ(spec["init"].get<std::string>(), "pca");
  EXPECT_GT(spec["regularizers"]["jitter"].get<int>(), 0) << "the preset's priors are on";
  EXPECT_EQ(spec["regularizers"]["pca"].get<std::string>(), "data/models/mnist_pca64.safetensors");
  EXPECT_EQ(spec["regularizers"]["pca_components"].get<int>(), 64);
  EXPECT_EQ(spec["regularizers"]["pca_digest"].get<std::string>().rfind("fnv1a64:", 0), 0u);
  EXPECT_GT(spec["regularizers"]["pca_prior"].get<double>(), 0.0);
  EXPECT_GT(spec["regularizers"]["pca_anchor"].get<double>(), 0.0);
  EXPECT_EQ(spec["regularizers"]["l1"].get<double>(), 0.0) << "the pixel priors are the strokes recipe's";
  EXPECT_LT(spec["regularizers"]["prior_decay"].get<double>(), 1.0);
  if (fs::exists(kJudge)) {
    ASSERT_TRUE(s.contains("judge_agreement")) << s.dump();
    const double a = s["judge_agreement"].get<double>();
    EXPECT_GE(a, 0.0);
    EXPECT_LE(a, 1.0);
    EXPECT_EQ(s["judge_rows"].get<long>(), 10);
    EXPECT_EQ(spec["judge"].get<std::string>(), "data/models/judge_mlp.safetensors");
  } else {
    EXPECT_FALSE(s.contains("judge_agreement")) << "no judge file, no judge";
  }
}

TEST(VisualizeCli, StrokesRecipeStartsFromNoiseWithPixelPriors) {
  Sandbox box;
  const fs::path out = box.work() / "viz";
  const RunOutput r = box.run({"visualize", "--recipe", "strokes", "--per-class", "1", "--steps", "5", "--tv", "0.07",
                               "--out", out.string(), "--quiet"},
                              kSource);
  ASSERT_EQ(r.code, 0) << r.err;
  check_outputs(out, 1, 3, "noise:");
  const nlohmann::json s = nlohmann::json::parse(slurp(out / "summary.json"));
  const nlohmann::json& spec = s["job"].is_object() ? s["job"] : s;
  EXPECT_EQ(spec["models"].size(), 2u) << "the strokes recipe's two-CNN ensemble";
  EXPECT_GT(spec["regularizers"]["l1"].get<double>(), 0.0);
  EXPECT_GT(spec["regularizers"]["blur_every"].get<int>(), 0);
  EXPECT_FLOAT_EQ(spec["regularizers"]["tv"].get<float>(), 0.07f) << "a given flag overrides the recipe";
  EXPECT_FALSE(spec["regularizers"].contains("pca"));
}

TEST(VisualizeCli, PcaRunsAreIndependentOfChunking) {
  // Image i depends on the seed and i only: chunks of 7 and one chunk give the same images.npy and results.csv.
  Sandbox box;
  const std::string pca = kSource + "/data/models/mnist_pca64.safetensors";
  std::vector<std::string> base = {"visualize", "--model", kModel, "--model", kModel2, "--pca", pca, "--per-class", "2",
                                   "--steps", "120", "--quiet"};
  std::vector<std::string> a = base, b = base;
  for (const char* x : {"--out", "whole", "--chunk", "20"}) a.push_back(x);
  for (const char* x : {"--out", "sevens", "--chunk", "7"}) b.push_back(x);
  const RunOutput ra = box.run(a), rb = box.run(b);
  ASSERT_EQ(ra.code, 0) << ra.err;
  ASSERT_EQ(rb.code, 0) << rb.err;
  EXPECT_EQ(slurp(box.work() / "whole" / "images.npy"), slurp(box.work() / "sevens" / "images.npy"));
  EXPECT_EQ(slurp(box.work() / "whole" / "results.csv"), slurp(box.work() / "sevens" / "results.csv"));
}

TEST(VisualizeCli, ExplicitModelAndJudge) {
  Sandbox box;
  // From another folder, the default basis path does not resolve: it is named, as the models are.
  std::vector<std::string> args = {"visualize", "--model", kModel, "--pca", kSource + "/data/models/mnist_pca64.safetensors",
                                   "--per-class", "2", "--steps", "3", "--out", "v", "--seed", "9", "--quiet"};
  const bool judged = fs::exists(kJudge);
  if (judged) {
    args.push_back("--judge");
    args.push_back(kJudge);
  }
  const RunOutput r = box.run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  check_outputs(box.work() / "v", 2, 3);
  const nlohmann::json s = nlohmann::json::parse(slurp(box.work() / "v" / "summary.json"));
  const nlohmann::json& spec = s["job"].is_object() ? s["job"] : s;
  EXPECT_EQ(spec["models"].size(), 1u);
  EXPECT_EQ(spec["seed"].get<uint64_t>(), 9u);
  EXPECT_EQ(s.contains("judge_agreement"), judged);
}

void expect_usage_error(const Sandbox& box, const std::vector<std::string>& args, const std::string& needle) {
  std::string joined;
  for (const std::string& a : args) joined += " " + a;
  SCOPED_TRACE("nudge" + joined);
  const RunOutput r = box.run(args);
  EXPECT_EQ(r.code, 2) << "stderr: " << r.err;
  EXPECT_EQ(r.err.rfind("nudge: ", 0), 0u) << "stderr: " << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << "stderr: " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in stderr: " << r.err;
  EXPECT_TRUE(box.leftovers().empty()) << "files left behind";
}

TEST(VisualizeCli, BadInput) {
  Sandbox box;
  expect_usage_error(box, {"visualize", "--model", kModel, "--per-class", "0", "--out", "v"}, "--per-class");
  expect_usage_error(box, {"visualize", "--model", kModel, "--per-class", "-3", "--out", "v"}, "--per-class");
  expect_usage_error(box, {"visualize", "--model", kModel, "--judge", kModel, "--per-class", "1", "--out", "v"},
                     "judge");
  // The same file under another spelling is still the same model.
  const std::string other_spelling = kSource + "/data/models/../models/mnist_cnn.safetensors";
  expect_usage_error(box, {"visualize", "--model", kModel2, "--model", kModel, "--judge", other_spelling,
                           "--per-class", "1", "--out", "v"},
                     "judge");
  expect_usage_error(box, {"visualize", "--model", kModel, "--recipe", "strokes", "--judge", "no_such_judge.safetensors",
                           "--per-class", "1", "--out", "v"},
                     "no_such_judge.safetensors");
  expect_usage_error(box, {"visualize", "--model", kModel, "--steps", "0", "--out", "v"}, "--steps");
  // A grid too large to draw is refused before the optimization, not after it.
  expect_usage_error(box, {"visualize", "--model", kModel, "--per-class", "100000", "--out", "v"}, "classes.png");
  expect_usage_error(box, {"visualize", "--model", kModel, "--recipe", "strokes", "--prior-decay", "1.5", "--out", "v"},
                     "--prior-decay");
  expect_usage_error(box, {"visualize", "--model", kModel, "--recipe", "dreams", "--out", "v"}, "--recipe");
  // Run from the sandbox, the default recipe's relative basis path is missing: the message says what to do.
  expect_usage_error(box, {"visualize", "--model", kModel, "--per-class", "1", "--out", "v"}, "mnist_pca64");
  expect_usage_error(box, {"visualize", "--model", kModel, "--pca", "no_such_basis.safetensors", "--out", "v"},
                     "no_such_basis.safetensors");
  expect_usage_error(box, {"visualize", "--model", kModel, "--recipe", "strokes", "--init", "pca", "--out", "v"},
                     "--init pca needs a basis");
  const std::string pca = kSource + "/data/models/mnist_pca64.safetensors";
  expect_usage_error(box, {"visualize", "--model", kModel, "--pca", pca, "--sigmoid", "--out", "v"}, "--sigmoid");
  expect_usage_error(box, {"visualize", "--model", kModel, "--pca", pca, "--pca-prior", "-1", "--out", "v"},
                     "--pca-prior");
  expect_usage_error(box, {"visualize", "--model", kModel, "--pca", pca, "--start-components", "-2", "--out", "v"},
                     "--start-components");
  // A model file is not a basis: refused by name before any compute.
  expect_usage_error(box, {"visualize", "--model", kModel, "--pca", kModel, "--out", "v"}, "not a basis");
}

// nudge pca on the test split (10,000 images, fast), then its refusals.
TEST(PcaCli, FitsTheTestSplitAndRefusesBadInput) {
  Sandbox box;
  const std::string out = (box.work() / "basis.safetensors").string();
  const RunOutput r = box.run({"pca", "--data", kSource + "/data/mnist", "--split", "test", "--components", "8",
                               "--out", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("8 components of 784 pixels"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(out));
  expect_usage_error(box, {"pca", "--data", kSource + "/data/mnist", "--components", "0", "--out", "b.safetensors"},
                     "--components");
  expect_usage_error(box, {"pca", "--data", kSource + "/data/mnist", "--components", "785", "--out", "b.safetensors"},
                     "--components");
  expect_usage_error(box, {"pca", "--data", kSource + "/data/mnist", "--split", "val", "--out", "b.safetensors"},
                     "--split");
  expect_usage_error(box, {"pca", "--data", "no_such_folder", "--out", "b.safetensors"}, "no_such_folder");
  EXPECT_FALSE(fs::exists(box.work() / "b.safetensors"));
}

}  // namespace
}  // namespace nudge
