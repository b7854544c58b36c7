// IDX reader and dataset loader: synthetic files built byte by byte (valid ones round-trip, every malformed one is an
// InputError that names the problem), then the real MNIST test set when data/fetch_mnist.sh has been run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "atomic_file.h"
#include "dataset.h"
#include "errors.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;

// An IDX file: magic (0, 0, type, number of dims), big-endian uint32 dims, then `data` verbatim.
std::string make_idx(const std::vector<uint32_t>& dims, const std::string& data, uint8_t type = 0x08) {
  std::string s = {'\0', '\0', static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>((d >> shift) & 0xFF));
  return s + data;
}

std::string ramp(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 7 % 256);
  return s;
}

// Passes when `fn` throws InputError whose one-line message contains `needle`; prints the message either way.
void expect_input_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no InputError; expected one mentioning '" << needle << "'";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nexpected to contain: " << needle;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
  }
}

void expect_parse_error(const std::string& bytes, const std::string& needle) {
  expect_input_error([&] { parse_idx(bytes, "some/file"); }, needle);
  // Every message starts with the name of the file so the user knows which one is broken.
  try {
    parse_idx(bytes, "some/file");
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("some/file: ", 0), 0u) << "message: " << e.what();
  }
}

TEST(ParseIdx, RoundTripThreeDims) {
  const std::string data = ramp(2 * 3 * 4);
  IdxArray a = parse_idx(make_idx({2, 3, 4}, data), "t");
  EXPECT_EQ(a.dims, (std::vector<int>{2, 3, 4}));
  ASSERT_EQ(a.bytes.size(), data.size());
  for (size_t i = 0; i < data.size(); ++i) EXPECT_EQ(a.bytes[i], static_cast<uint8_t>(data[i])) << "byte " << i;
}

TEST(ParseIdx, RoundTripOneAndFourDims) {
  IdxArray one = parse_idx(make_idx({5}, "\x01\x02\x03\x04\xFF"), "t");
  EXPECT_EQ(one.dims, (std::vector<int>{5}));
  EXPECT_EQ(one.bytes, (std::vector<uint8_t>{1, 2, 3, 4, 255}));
  IdxArray four = parse_idx(make_idx({1, 2, 1, 3}, ramp(6)), "t");
  EXPECT_EQ(four.dims, (std::vector<int>{1, 2, 1, 3}));
  EXPECT_EQ(four.bytes.size(), 6u);
}

TEST(ParseIdx, DimensionsAreBigEndian) {
  // 0x0102 = 258 elements; a little-endian reader would see 0x02010000 and call the file truncated.
  IdxArray a = parse_idx(make_idx({0x0102}, ramp(258)), "t");
  EXPECT_EQ(a.dims, (std::vector<int>{258}));
}

TEST(ParseIdx, TooShortForMagic) {
  expect_parse_error("", "file is 0 bytes, too short for the 4-byte IDX magic");
  expect_parse_error(std::string("\0\0\x08", 3), "file is 3 bytes, too short for the 4-byte IDX magic");
}

TEST(ParseIdx, BadMagicZeroBytes) {
  std::string s = make_idx({1}, "x");
  s[0] = 0x1F;  // gzip's first byte: the classic mistake of feeding a .gz file
  expect_parse_error(s, "not an IDX file");
  s = make_idx({1}, "x");
  s[1] = 0x01;
  expect_parse_error(s, "not an IDX file");
}

TEST(ParseIdx, UnsupportedType) {
  expect_parse_error(make_idx({1}, "xy", 0x0B), "unsupported IDX type 0x0B, nudge reads unsigned bytes (0x08)");
  expect_parse_error(make_idx({1}, "xyzw", 0x0D), "unsupported IDX type 0x0D");
  expect_parse_error(make_idx({1}, "x", 0x07), "unknown IDX type 0x07");
}

TEST(ParseIdx, DimensionCountOutOfRange) {
  expect_parse_error(make_idx({}, ""), "header says 0 dimensions; nudge reads 1 to 4");
  expect_parse_error(make_idx({1, 1, 1, 1, 1}, "x"), "header says 5 dimensions; nudge reads 1 to 4");
}

TEST(ParseIdx, ZeroDimension) { expect_parse_error(make_idx({3, 0, 2}, ""), "dimension 1 is 0"); }

TEST(ParseIdx, ElementCountOverflow) {
  // 2^32-1 to the 4th power overflows even 64 bits; the reader must refuse before multiplying.
  expect_parse_error(make_idx({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, ""), "more than 2147483647 elements");
  expect_parse_error(make_idx({65536, 32768}, ""), "more than 2147483647 elements");
}

TEST(ParseIdx, HeaderTruncated) {
  const std::string full = make_idx({10, 28, 28}, "");
  expect_parse_error(full.substr(0, 13), "file is 13 bytes, too short for the 16-byte header");
  expect_parse_error(full.substr(0, 4), "file is 4 bytes, too short for the 16-byte header");
}

TEST(ParseIdx, DataTruncated) {
  const std::string full = make_idx({10, 28, 28}, ramp(7840));
  expect_parse_error(full.substr(0, full.size() - 16), "file is 7840 bytes, the header promises 7856");
}

TEST(ParseIdx, TrailingBytes) {
  expect_parse_error(make_idx({2, 2}, ramp(5)), "file is 17 bytes, the header promises 16 (1 trailing bytes)");
}

// A scratch folder per test, removed afterwards.
class LoadDataset : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::temp_directory_path() / ("nudge_test_dataset." + std::to_string(::getpid()) + "." + info->name()))
               .string();
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write(const std::string& name, const std::string& contents) {
    write_file_atomically(dir_ + "/" + name, contents);
  }
  std::string dir_;
};

TEST_F(LoadDataset, RoundTripAndFloatImage) {
  write("t10k-images-idx3-ubyte", make_idx({3, 2, 2}, std::string("\x00\xFF\x33\x80" "abcd" "efgh", 12)));
  write("t10k-labels-idx1-ubyte", make_idx({3}, std::string("\x09\x00\x04", 3)));
  Dataset d = load_dataset(dir_, "test");
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.rows, 2);
  EXPECT_EQ(d.cols, 2);
  EXPECT_EQ(d.labels, (std::vector<uint8_t>{9, 0, 4}));
  ASSERT_EQ(d.pixels.size(), 12u);
  EXPECT_EQ(d.pixels[5], 'b');

  std::array<float, 5> out;
  out.fill(-1.0f);  // sentinel: the fifth float lies past the image and must stay untouched
  d.image_as_float(0, out.data());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(out[2], 0x33 / 255.0f);
  EXPECT_EQ(out[3], 0x80 / 255.0f);
  EXPECT_EQ(out[4], -1.0f);
  d.image_as_float(2, out.data());
  EXPECT_EQ(out[0], 'e' / 255.0f);

  expect_input_error([&] { d.image_as_float(3, out.data()); }, "image 3 is out of range");
  expect_input_error([&] { d.image_as_float(-1, out.data()); }, "image -1 is out of range");
}

TEST_F(LoadDataset, TrainSplitUsesTrainFiles) {
  write("train-images-idx3-ubyte", make_idx({1, 1, 3}, "abc"));
  write("train-labels-idx1-ubyte", make_idx({1}, std::string("\x07", 1)));
  Dataset d = load_dataset(dir_, "train");
  EXPECT_EQ(d.count, 1);
  EXPECT_EQ(d.cols, 3);
  EXPECT_EQ(d.labels[0], 7);
}

TEST_F(LoadDataset, UnknownSplit) { expect_input_error([&] { load_dataset(dir_, "validation"); }, "'validation'"); }

TEST_F(LoadDataset, MissingFileSaysHowToFetch) {
  expect_input_error([&] { load_dataset(dir_, "test"); }, "t10k-images-idx3-ubyte: file not found");
  expect_input_error([&] { load_dataset(dir_, "test"); }, "run data/fetch_mnist.sh");
  write("t10k-images-idx3-ubyte", make_idx({1, 1, 1}, "a"));
  expect_input_error([&] { load_dataset(dir_, "test"); }, "t10k-labels-idx1-ubyte: file not found");
}

TEST_F(LoadDataset, LabelOutOfRange) {
  write("t10k-images-idx3-ubyte", make_idx({3, 1, 1}, "abc"));
  write("t10k-labels-idx1-ubyte", make_idx({3}, std::string("\x01\x0A\x02", 3)));
  expect_input_error([&] { load_dataset(dir_, "test"); }, "label 10 at index 1 is not a class 0-9");
}

TEST_F(LoadDataset, CountMismatch) {
  write("t10k-images-idx3-ubyte", make_idx({3, 1, 1}, "abc"));
  write("t10k-labels-idx1-ubyte", make_idx({2}, std::string("\x01\x02", 2)));
  expect_input_error([&] { load_dataset(dir_, "test"); }, "2 labels for 3 images");
}

TEST_F(LoadDataset, WrongNumberOfDimensions) {
  write("t10k-images-idx3-ubyte", make_idx({3}, "abc"));
  write("t10k-labels-idx1-ubyte", make_idx({3}, std::string("\x01\x02\x03", 3)));
  expect_input_error([&] { load_dataset(dir_, "test"); }, "images have 1 dimensions, expected 3");
  write("t10k-images-idx3-ubyte", make_idx({3, 1, 1}, "abc"));
  write("t10k-labels-idx1-ubyte", make_idx({3, 1}, std::string("\x01\x02\x03", 3)));
  expect_input_error([&] { load_dataset(dir_, "test"); }, "labels have 2 dimensions, expected 1");
}

TEST_F(LoadDataset, MalformedFileNamesItsPath) {
  write("t10k-images-idx3-ubyte", make_idx({3, 1, 1}, "ab"));
  write("t10k-labels-idx1-ubyte", make_idx({3}, std::string("\x01\x02\x03", 3)));
  expect_input_error([&] { load_dataset(dir_, "test"); },
                     dir_ + "/t10k-images-idx3-ubyte: file is 18 bytes, the header promises 19");
}

// Facts from shared/data/MNIST.md, checked against the real files.
TEST(MnistTestSet, KnownFacts) {
  const std::string dir = NUDGE_SOURCE_DIR "/data/mnist";
  if (!fs::exists(dir + "/t10k-images-idx3-ubyte") || !fs::exists(dir + "/t10k-labels-idx1-ubyte"))
    GTEST_SKIP() << "MNIST not fetched: run data/fetch_mnist.sh";
  Dataset d = load_dataset(dir, "test");
  EXPECT_EQ(d.count, 10000);
  EXPECT_EQ(d.rows, 28);
  EXPECT_EQ(d.cols, 28);
  std::array<int, 10> counts{};
  for (uint8_t label : d.labels) ++counts[label];
  EXPECT_EQ(counts, (std::array<int, 10>{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009}));
  EXPECT_EQ(d.labels[307], 7);
  EXPECT_EQ(d.labels[61], 8);

  // A real digit is mostly background with some full-intensity strokes.
  std::vector<float> img(28 * 28);
  d.image_as_float(307, img.data());
  float lo = 1, hi = 0;
  for (float v : img) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);
}

}  // namespace
}  // namespace nudge
