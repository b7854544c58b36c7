// safetensors reader/writer: round trips, byte-exact agreement with the reference writer's test vectors, and one
// table of malformed files, each of which must raise InputError with a one-line message naming the problem.
#include "safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>

#include "atomic_file.h"
#include "errors.h"
#include "temp_dir.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;

// 8-byte little-endian length, the header text as given (no padding), then the data bytes.
std::string with_header(const std::string& header, const std::string& data = "", uint64_t claimed_length = ~0ull) {
  uint64_t n = claimed_length == ~0ull ? header.size() : claimed_length;
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string floats_to_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::string from_byte_values(const std::vector<int>& v) {
  std::string s;
  for (int b : v) s += static_cast<char>(b);
  return s;
}

// Compares bit patterns, so NaN payloads and -0.0 must survive too.
void expect_same_file(const SafetensorsFile& a, const SafetensorsFile& b) {
  EXPECT_EQ(a.metadata, b.metadata);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    SCOPED_TRACE("tensor " + a.tensors[i].first);
    EXPECT_EQ(a.tensors[i].first, b.tensors[i].first);
    EXPECT_EQ(a.tensors[i].second.shape, b.tensors[i].second.shape);
    const std::vector<float>&x = a.tensors[i].second.data, &y = b.tensors[i].second.data;
    ASSERT_EQ(x.size(), y.size());
    if (!x.empty()) {
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float)));
    }
  }
}

SafetensorsFile random_file(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  SafetensorsFile f;
  f.metadata = {{"nudge.architecture", "1x28x28:conv24k3,relu"}, {"quote\"and\\slash", "line\nbreak"},
                {"unicode", "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93"}};
  // Not in name order, and two empty tensors share an offset: the reader must keep the written order.
  const std::vector<std::vector<int64_t>> shapes = {{24, 1, 3, 3}, {24}, {}, {0, 3}, {0}, {10, 64}, {7}};
  const char* names[] = {"conv1.weight", "conv1.bias", "scalar", "empty", "another_empty", "dense.weight", "special"};
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor t(shapes[i]);
    for (float& x : t.data) x = normal(rng);
    f.tensors.emplace_back(names[i], std::move(t));
  }
  // Values that a float round trip through text would damage.
  auto& special = f.tensors.back().second.data;
  special = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -0.0f,
             std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::max(), 1e-30f, 3.0f};
  return f;
}

// A private directory under the GoogleTest temp dir, removed afterwards.
struct TempDir : testing_support::TempDir {
  TempDir() : testing_support::TempDir("nudge_safetensors_") {}
};

TEST(Safetensors, RoundTripThroughBytes) {
  SafetensorsFile f = random_file(1234);
  std::string bytes = serialize_safetensors(f);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to a multiple of 8";
  EXPECT_EQ(bytes[8], '{');
  // Tensors come back in the order written (which is their data order), not sorted by name.
  expect_same_file(f, parse_safetensors(bytes, "memory"));
  EXPECT_EQ(serialize_safetensors(parse_safetensors(bytes, "memory")), bytes);
}

TEST(Safetensors, RoundTripThroughFile) {
  TempDir dir;
  SafetensorsFile f = random_file(99);
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, f);
  expect_same_file(f, read_safetensors(path));
  // Overwriting goes through the same atomic path and leaves only the final file behind.
  f.metadata.clear();
  f.tensors.resize(2);
  write_safetensors(path, f);
  expect_same_file(f, read_safetensors(path));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
  EXPECT_EQ(read_file(path).find("__metadata__"), std::string::npos) << "empty metadata is not written";
}

TEST(Safetensors, EmptyFileRoundTrips) {
  SafetensorsFile empty;
  std::string bytes = serialize_safetensors(empty);
  EXPECT_EQ(bytes, with_header("{}      "));  // the reference writer's test_empty vector
  SafetensorsFile back = parse_safetensors(bytes, "memory");
  EXPECT_TRUE(back.tensors.empty());
  EXPECT_TRUE(back.metadata.empty());
}

// Byte vectors from the reference implementation's own tests (huggingface/safetensors, tensor.rs): our writer
// must produce them exactly and our reader must accept them.
TEST(Safetensors, MatchesReferenceWriterBytes) {
  const std::string attn0 = from_byte_values(
      {72,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97, 116, 116, 110, 48, 34,  58,  123, 34,  100, 116,
       121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44, 34,  115, 104, 97, 112, 101, 34,  58,  91,  49,
       44,  49,  44,  50,  44,  51,  93,  44,  34,  100, 97, 116, 97,  95,  111, 102, 102, 115, 101, 116, 115,
       34,  58,  91,  48,  44,  50,  52,  93,  125, 125, 32, 32,  32,  32,  32,  32,  32,  0,   0,   0,   0,
       0,   0,   128, 63,  0,   0,   0,   64,  0,   0,   64, 64,  0,   0,   128, 64,  0,   0,   160, 64});
  SafetensorsFile f;
  Tensor t({1, 1, 2, 3});
  t.data = {0, 1, 2, 3, 4, 5};
  f.tensors.emplace_back("attn0", t);
  EXPECT_EQ(serialize_safetensors(f), attn0);
  expect_same_file(f, parse_safetensors(attn0, "attn0"));

  const std::string metadata_only =
      from_byte_values({40, 0,   0,   0,   0,   0,   0,   0,   123, 34,  95, 95, 109, 101, 116, 97,
                        100, 97, 116, 97,  95,  95,  34,  58,  123, 34,  102, 114, 97, 109, 101, 119,
                        111, 114, 107, 34, 58,  34,  112, 116, 34,  125, 125, 32,  32, 32,  32,  32});
  SafetensorsFile m;
  m.metadata["framework"] = "pt";
  EXPECT_EQ(serialize_safetensors(m), metadata_only);
  expect_same_file(m, parse_safetensors(metadata_only, "metadata_only"));
}

// Laid out as PyTorch's save_file writes it (padded header, metadata first), except that the JSON lists the tensors
// out of data order, as older writers did: the reader must return them sorted by offset.
TEST(Safetensors, ParsesHandBuiltPyTorchFile) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"bias":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
      R"("weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string bytes = with_header(header, floats_to_bytes({1, 2, 3, 4, -0.5f, 0.25f}));
  SafetensorsFile f = parse_safetensors(bytes, "torch.safetensors");
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "weight");
  EXPECT_EQ(f.tensors[0].second.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f.tensors[0].second.data, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(f.tensors[1].first, "bias");
  EXPECT_EQ(f.tensors[1].second.data, (std::vector<float>{-0.5f, 0.25f}));
}

// An empty tensor may share its offset with the tensor after it, whichever the header lists first.
TEST(Safetensors, EmptyTensorSharingAnOffsetParses) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("z":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]}})";
  SafetensorsFile f = parse_safetensors(with_header(header, floats_to_bytes({7})), "memory");
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "z");
  EXPECT_EQ(f.tensors[0].second.shape, (std::vector<int64_t>{0, 5}));
  EXPECT_TRUE(f.tensors[0].second.data.empty());
  EXPECT_EQ(f.tensors[1].first, "a");
  EXPECT_EQ(f.tensors[1].second.data, (std::vector<float>{7}));
}

struct BadCase {
  std::string label;
  std::function<std::string()> bytes;
  std::string expected;  // a substring of the message
};

// One tensor entry: F32 unless told otherwise.
std::string entry(const std::string& shape, const std::string& offsets, const std::string& dtype = "\"F32\"") {
  return R"({"dtype":)" + dtype + R"(,"shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
}

std::vector<BadCase> bad_cases() {
  const std::string four(4, '\0'), eight(8, '\0'), twelve(12, '\0');
  auto json = [](std::string header, std::string data = "") { return [=] { return with_header(header, data); }; };
  return {
      {"empty file", [] { return std::string(); }, "file is 0 bytes, shorter than the 8-byte header length"},
      {"short file", [] { return std::string("\x10\0\0", 3); }, "shorter than the 8-byte header length"},
      {"length past end", [] { return with_header("{}", "", 1000); },
       "header length 1000 runs past the end of the file (10 bytes)"},
      {"length absurd", [] { return with_header("{}", "", 200'000'000); }, "header length 200000000 is absurd"},
      {"length near 2^64", [] { return with_header("{}", "", ~0ull - 1) + "x"; }, "is absurd"},
      {"zero-length header", json(""), "malformed JSON header: "},
      {"truncated JSON", json(R"({"a":)"), "unexpected end of input"},
      {"garbage JSON", json("{nope}"), "malformed JSON header: parse error"},
      {"invalid UTF-8", json("{\"\xff\":1}"), "ill-formed UTF-8 byte; last read: '\"\\xff'"},
      {"trailing garbage", json("{} x"), "malformed JSON header"},
      {"array header", json("[1,2]"), "header is an array, not a JSON object"},
      {"string header", json(R"("hi")"), "header is a string, not a JSON object"},
      {"entry not object", json(R"({"a":3})"), "tensor a entry is a number, not an object"},
      {"missing dtype", json(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", four), "tensor a has no dtype"},
      {"missing shape", json(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", four), "tensor a has no shape"},
      {"missing offsets", json(R"({"a":{"dtype":"F32","shape":[1]}})", four), "tensor a has no data_offsets"},
      {"dtype not string", json(R"({"a":)" + entry("[1]", "[0,4]", "32") + "}", four), "dtype is a number"},
      {"shape not array", json(R"({"a":)" + entry("4", "[0,4]") + "}", four), "shape is a number, not an array"},
      {"offsets one value", json(R"({"a":)" + entry("[1]", "[4]") + "}", four), "is not [begin, end]"},
      {"offsets object", json(R"({"a":)" + entry("[1]", R"({"b":0})") + "}", four), "is not [begin, end]"},
      {"offsets negative", json(R"({"a":)" + entry("[1]", "[-4,0]") + "}", four), "is not [begin, end]"},
      {"offsets float", json(R"({"a":)" + entry("[1]", "[0,4.0]") + "}", four), "is not [begin, end]"},
      {"negative dim", json(R"({"a":)" + entry("[2,-1]", "[0,4]") + "}", four), "tensor a shape has negative dim -1"},
      {"fractional dim", json(R"({"a":)" + entry("[2.5]", "[0,4]") + "}", four), "non-integer dim 2.5"},
      {"string dim", json(R"({"a":)" + entry(R"(["2"])", "[0,4]") + "}", four), "non-integer dim \"2\""},
      {"dim beyond uint64", json(R"({"a":)" + entry("[1e30]", "[0,4]") + "}", four), "non-integer dim"},
      {"unknown dtype", json(R"({"a":)" + entry("[1]", "[0,4]", R"("Q9")") + "}", four), "unknown dtype 'Q9'"},
      {"lowercase dtype", json(R"({"a":)" + entry("[1]", "[0,4]", R"("f32")") + "}", four), "unknown dtype 'f32'"},
      {"F16", json(R"({"conv1.weight":)" + entry("[2]", "[0,4]", R"("F16")") + "}", four),
       "tensor conv1.weight has dtype F16; nudge reads F32"},
      {"BF16", json(R"({"a":)" + entry("[2]", "[0,4]", R"("BF16")") + "}", four), "has dtype BF16; nudge reads F32"},
      {"dim over int64", json(R"({"a":)" + entry("[9223372036854775808]", "[0,4]") + "}", four), "overflows int64"},
      {"count overflow", json(R"({"a":)" + entry("[4294967296,4294967296]", "[0,4]") + "}", four), "overflows"},
      {"bytes overflow", json(R"({"a":)" + entry("[4611686018427387904]", "[0,4]") + "}", four), "overflows"},
      {"overflow before zero dim", json(R"({"a":)" + entry("[4294967296,4294967296,0]", "[0,0]") + "}"), "overflows"},
      {"begin > end", json(R"({"a":)" + entry("[0]", "[8,4]") + "}", eight), "data_offsets [8, 4] have begin > end"},
      {"size mismatch", json(R"({"a":)" + entry("[2]", "[0,12]") + "}", twelve),
       "has shape [2] (8 bytes of F32) but data_offsets [0, 12] span 12 bytes"},
      {"end past data", json(R"({"a":)" + entry("[2]", "[0,8]") + "}", four),
       "run past the end of the data section (4 bytes)"},
      {"offsets near 2^64", json(R"({"a":)" + entry("[1]", "[18446744073709551612,18446744073709551615]") + "}"),
       "span 3 bytes"},
      {"end at 2^64-1", json(R"({"a":)" + entry("[1]", "[18446744073709551611,18446744073709551615]") + "}", four),
       "run past the end of the data section"},
      {"overlap", json(R"({"a":)" + entry("[2]", "[0,8]") + R"(,"b":)" + entry("[2]", "[4,12]") + "}", twelve),
       "tensors a [0, 8) and b [4, 12) overlap"},
      {"same range twice", json(R"({"a":)" + entry("[1]", "[0,4]") + R"(,"b":)" + entry("[1]", "[0,4]") + "}", four),
       "overlap"},
      {"empty tensor inside another",
       json(R"({"a":)" + entry("[2]", "[0,8]") + R"(,"b":)" + entry("[0]", "[4,4]") + "}", eight), "overlap"},
      {"gap", json(R"({"a":)" + entry("[1]", "[0,4]") + R"(,"b":)" + entry("[1]", "[8,12]") + "}", twelve),
       "data bytes [4, 8) belong to no tensor (a gap before tensor b)"},
      {"gap at start", json(R"({"a":)" + entry("[1]", "[4,8]") + "}", eight), "data bytes [0, 4) belong to no tensor"},
      {"trailing bytes", json(R"({"a":)" + entry("[1]", "[0,4]") + "}", eight),
       "data bytes [4, 8) belong to no tensor (trailing bytes)"},
      {"data but no tensors", json("{}", four), "data bytes [0, 4) belong to no tensor"},
      {"metadata number", json(R"({"__metadata__":{"k":1}})"),
       "__metadata__ value for 'k' is a number; metadata values must be strings"},
      {"metadata nested", json(R"({"__metadata__":{"k":{"x":"y"}}})"), "value for 'k' is an object"},
      {"metadata not object", json(R"({"__metadata__":"pt"})"), "__metadata__ is a string"},
      {"duplicate tensor", json(R"({"a":)" + entry("[1]", "[0,4]") + R"(,"a":)" + entry("[1]", "[4,8]") + "}", eight),
       "tensor name 'a' appears twice"},
      {"duplicate field", json(R"({"a":{"dtype":"F16","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four),
       "duplicate key 'dtype'"},
      {"duplicate metadata key", json(R"({"__metadata__":{"k":"1","k":"2"}})"), "duplicate key 'k'"},
      {"deep nesting", json(std::string(100000, '[') + std::string(100000, ']')), "nests deeper than"},
      {"control chars in name", json("{\"a\\nb\\u0000\":3}"), "tensor a\\x0ab\\x00 entry is a number"},
      {"long name", json("{\"" + std::string(5000, 'n') + "\":3}"), "nnnnnn... entry is a number"},
  };
}

TEST(Safetensors, MalformedFilesThrowInputErrorNamingTheProblem) {
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.label);
    try {
      parse_safetensors(c.bytes(), "bad.safetensors");
      ADD_FAILURE() << "parsed without error; expected \"" << c.expected << "\"";
    } catch (const InputError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(c.expected), std::string::npos) << "message: " << message;
      EXPECT_EQ(message.rfind("bad.safetensors: ", 0), 0u) << "message: " << message;
      EXPECT_TRUE(std::all_of(message.begin(), message.end(), [](char ch) { return ch >= 0x20 && ch < 0x7f; }))
          << "message is not one line of printable ASCII: " << message;
      EXPECT_LT(message.size(), 500u) << "message: " << message;
    }
  }
}

// Names are cut for messages on a character boundary, so a message never carries half a UTF-8 character.
TEST(Safetensors, LongUtf8NameIsCutOnCharacterBoundary) {
  std::string check_marks;
  for (int i = 0; i < 100; ++i) check_marks += "\xe2\x9c\x93";  // U+2713, 3 bytes
  try {
    parse_safetensors(with_header("{\"" + check_marks + "\":3}"), "utf8");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              "utf8: tensor " + check_marks.substr(0, 26 * 3) + "... entry is a number, not an object");
  }
}

// Hostile bytes must end in a parse or in InputError, never in another exception or a crash (run it under
// -fsanitize=address,undefined to catch out-of-bounds reads): every truncation of a valid file, and random byte
// flips in the header and the length field.
TEST(Safetensors, TruncatedAndCorruptedFilesNeverEscapeInputError) {
  const std::string good = serialize_safetensors(random_file(7));
  for (size_t len = 0; len < good.size(); ++len)
    EXPECT_THROW(parse_safetensors(good.substr(0, len), "truncated"), InputError) << "length " << len;

  uint64_t header_end = 0;
  std::memcpy(&header_end, good.data(), 8);
  header_end += 8;
  std::mt19937 rng(42);
  std::uniform_int_distribution<size_t> where(0, static_cast<size_t>(header_end) - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  int parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    for (int flips = 1 + trial % 3; flips > 0; --flips) bytes[where(rng)] = static_cast<char>(byte(rng));
    try {
      parse_safetensors(bytes, "corrupt");
      ++parsed;  // a flip inside a name or a metadata string leaves a valid file
    } catch (const InputError&) {
    }
  }
  RecordProperty("corrupted_files_still_valid", parsed);
}

TEST(Safetensors, WriteIntoMissingDirectoryThrowsAndLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/model.safetensors");
  EXPECT_THROW(write_safetensors(path, random_file(3)), InputError);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(dir.path() / "no"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 0);
}

TEST(Safetensors, ReadMissingFileNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("absent.safetensors");
  try {
    read_safetensors(path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ReadErrorsNameTheFile) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  write_file_atomically(path, with_header("[]"));
  try {
    read_safetensors(path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": header is an array, not a JSON object");
  }
}

TEST(Safetensors, WriterRefusesInconsistentTensors) {
  SafetensorsFile f;
  Tensor t({2, 3});
  t.data.resize(5);
  f.tensors.emplace_back("short", t);
  EXPECT_THROW(serialize_safetensors(f), InternalError);

  SafetensorsFile twice;
  twice.tensors.emplace_back("a", Tensor({1}));
  twice.tensors.emplace_back("a", Tensor({1}));
  EXPECT_THROW(serialize_safetensors(twice), InternalError);

  SafetensorsFile reserved;
  reserved.tensors.emplace_back("__metadata__", Tensor({1}));
  EXPECT_THROW(serialize_safetensors(reserved), InternalError);
}

}  // namespace
}  // namespace nudge
