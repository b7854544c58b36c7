// The open-set model's pieces: synthetic non-digits (host/train/nondigits.h), class names (model.h), and the commands
// that train an 11-class model (nudge train --open-set) and count the classes given to non-digits (nudge eval
// --nondigits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_sandbox.h"
#include "errors.h"
#include "mnist.h"
#include "model.h"
#include "nondigits.h"
#include "start_images.h"

namespace nudge {
namespace {

using testing_support::CliSandbox;

// A 28x28 "dataset" of 3 images with distinct pixel values, for the shuffled family.
Dataset tiny_digits() {
  Dataset d;
  d.count = 3;
  d.rows = d.cols = 28;
  d.pixels.resize(3 * 784);
  for (size_t i = 0; i < d.pixels.size(); ++i) d.pixels[i] = static_cast<uint8_t>((i * 37) % 256);
  d.labels = {1, 2, 3};
  return d;
}

const NonDigitFamily kAll[] = {NonDigitFamily::Uniform, NonDigitFamily::Gauss, NonDigitFamily::Constant,
                               NonDigitFamily::Shuffled, NonDigitFamily::Blocks, NonDigitFamily::Noise,
                               NonDigitFamily::Patches,  NonDigitFamily::Shapes};

TEST(NonDigits, ImagesAreAPureFunctionOfFamilySeedAndIndexAndInTheUnitBox) {
  const Dataset d = tiny_digits();
  for (NonDigitFamily f : kAll) {
    SCOPED_TRACE(to_string(f));
    std::vector<float> a(784), b(784), c(784), e(784);
    make_nondigit(f, 5, 17, d, a.data());
    make_nondigit(f, 5, 17, d, b.data());
    make_nondigit(f, 5, 18, d, c.data());
    make_nondigit(f, 6, 17, d, e.data());
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c) << "another index must give another image";
    EXPECT_NE(a, e) << "another seed must give another image";
    for (float v : a) {
      ASSERT_TRUE(std::isfinite(v));
      ASSERT_GE(v, 0.0f);
      ASSERT_LE(v, 1.0f);
    }
  }
}

TEST(NonDigits, EachFamilyHasItsShape) {
  const Dataset d = tiny_digits();
  std::vector<float> x(784);
  make_nondigit(NonDigitFamily::Constant, 1, 3, d, x.data());
  EXPECT_TRUE(std::all_of(x.begin(), x.end(), [&](float v) { return v == x[0]; }));
  // Shuffled: a permutation of one of the digits' pixels (the same multiset of values).
  make_nondigit(NonDigitFamily::Shuffled, 1, 3, d, x.data());
  std::vector<float> sorted = x;
  std::sort(sorted.begin(), sorted.end());
  bool matches_a_digit = false;
  for (int n = 0; n < d.count; ++n) {
    std::vector<float> img(784);
    d.image_as_float(n, img.data());
    if (img == x) ADD_FAILURE() << "the shuffled image is its digit unshuffled";
    std::sort(img.begin(), img.end());
    matches_a_digit |= img == sorted;
  }
  EXPECT_TRUE(matches_a_digit);
  // Blocks: constant over each 4x4 block, not constant overall.
  make_nondigit(NonDigitFamily::Blocks, 1, 3, d, x.data());
  for (int h = 0; h < 28; ++h)
    for (int w = 0; w < 28; ++w) ASSERT_EQ(x[h * 28 + w], x[(h / 4 * 4) * 28 + w / 4 * 4]);
  EXPECT_NE(x[0], x[4]);
  // Noise: nudge optimize's --init noise image of the same seed and index.
  std::vector<float> ref(784);
  noise_image(9, 42, 784, ref.data());
  make_nondigit(NonDigitFamily::Noise, 9, 42, d, x.data());
  EXPECT_EQ(x, ref);
}

TEST(NonDigits, FamilyListsParseAndBadNamesAreNamed) {
  EXPECT_EQ(parse_nondigit_families("uniform,blocks").size(), 2u);
  try {
    parse_nondigit_families("uniform,stripes");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown non-digit family 'stripes'"), std::string::npos);
  }
  EXPECT_THROW(parse_nondigit_families(","), InputError);
}

TEST(ClassNames, FromMetadataWhenTheyFitElseTheIndices) {
  Model m = Model::glorot(Architecture::parse("1x4x4:flatten,dense3"), 1);
  EXPECT_EQ(class_names(m), (std::vector<std::string>{"0", "1", "2"}));
  m.metadata[kClassesKey] = "cat,dog,not a digit";
  EXPECT_EQ(class_names(m), (std::vector<std::string>{"cat", "dog", "not a digit"}));
  m.metadata[kClassesKey] = "cat,dog";  // wrong count: ignored
  EXPECT_EQ(class_names(m), (std::vector<std::string>{"0", "1", "2"}));
}

// nudge train --open-set on a few hundred images: an 11-class model that names its last class, with the recipe;
// eval --nondigits counts; the refusals.
TEST(OpenSet, TrainAndEvalCommands) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_open_");
  const std::string data = testing_support::mnist_dir();
  auto r = box.run({"train", "--open-set", "8", "--limit", "640", "--epochs", "1", "--data", data, "--device", "cpu",
                    "--out", box.path("open.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  const Model m = Model::load(box.path("open.safetensors"));
  EXPECT_EQ(m.arch.num_classes(), 11);
  EXPECT_EQ(class_names(m).back(), kNotADigit);
  EXPECT_NE(m.metadata.at("nudge.recipe").find("\"open_set\""), std::string::npos);
  r = box.run({"eval", "--model", box.path("open.safetensors"), "--data", data, "--nondigits", "noise,constant",
               "--count", "200", "--device", "cpu", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"not_a_digit\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"family\":\"constant\""), std::string::npos) << r.out;
  // Even one epoch on 640 digits with 160 non-digits learns to reject constant images.
  const size_t at = r.out.find("\"family\":\"constant\"");
  const size_t nd = r.out.find("\"not_a_digit\":", at);
  ASSERT_NE(nd, std::string::npos);
  EXPECT_GT(std::stod(r.out.substr(nd + 14)), 0.9) << r.out;

  r = box.run({"train", "--open-set", "8", "--arch", "1x28x28:flatten,dense10", "--data", data, "--out", box.path("x")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--open-set needs an architecture with 11 outputs"), std::string::npos) << r.err;
  r = box.run({"train", "--open-set", "8", "--adversarial", "pgd", "--limit", "64", "--epochs", "1", "--data", data,
               "--out", box.path("y.safetensors")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--open-set trains plain models only"), std::string::npos) << r.err;
  r = box.run({"eval", "--model", box.path("open.safetensors"), "--data", data, "--nondigits", "noise,shapes", "--count",
               "12", "--sheet", box.path("sheet.png"), "--device", "cpu"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(testing_support::slurp(box.path("sheet.png")).substr(1, 3), "PNG");
  r = box.run({"eval", "--model", box.path("open.safetensors"), "--data", data, "--nondigits", "stripes"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown non-digit family 'stripes'"), std::string::npos) << r.err;
}

// A 10-class judge of the open-set model: it judges the rows toward digits, and leaves the rows toward "not a digit"
// (a class it lacks) unjudged; a judge with more classes than the model is refused.
TEST(OpenSet, TenClassJudgeOfAnElevenClassModel) {
  REQUIRE_MNIST();
  CliSandbox box("nudge_open_judge_");
  const std::string models = std::string(NUDGE_SOURCE_DIR) + "/data/models/";
  const std::string data = testing_support::mnist_dir();
  auto r = box.run({"optimize", "--model", models + "mnist_cnn_open.safetensors", "--judge", models + "judge_mlp.safetensors",
                    "--init", "noise", "--count", "22", "--target", "all", "--steps", "3", "--data", data, "--device", "cpu",
                    "--quiet", "--out", box.path("j")});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string summary = testing_support::slurp(box.path("j/summary.json"));
  EXPECT_NE(summary.find("\"judge_rows\": 20"), std::string::npos) << summary;  // the 2 rows toward class 10 are not judged
  const std::string csv = testing_support::slurp(box.path("j/results.csv"));
  // Rows 10 and 21 go toward class 10: their judge_p_target is empty, every other row's is a number.
  int empty = 0, lines = 0;
  size_t at = csv.find('\n') + 1;
  while (at < csv.size()) {
    const size_t end = csv.find('\n', at);
    const std::string line = csv.substr(at, end - at);
    ++lines;
    empty += line.back() == ',';
    at = end + 1;
  }
  EXPECT_EQ(lines, 22);
  EXPECT_EQ(empty, 2) << csv;
  r = box.run({"optimize", "--model", models + "judge_mlp.safetensors", "--judge", models + "mnist_cnn_open.safetensors",
               "--init", "noise", "--count", "2", "--target", "all", "--steps", "1", "--data", data, "--out", box.path("k")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("does not take the same inputs and classes"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace nudge
