// Hostile and careless input (issue 13): every defect found by trying nudge as such a user would, each as a test that
// failed before its fix. Defects by number:
//   1 shape products overflow int          2 bad_alloc inside OpenMP regions   3 --range built before it is checked
//   4 NaN results with exit 0              5 report size follows --steps        6 upper-case image extensions
//   7 FIFOs, decode/read before checks     8 results.csv quoting                9 flag values ignored
//   10 I/O errors, empty output folders, the stdio buffer
// CLI cases run the real binary in a sandbox; the rest call the library.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "architecture.h"
#include "atomic_file.h"
#include "cli_sandbox.h"
#include "errors.h"
#include "image_io.h"
#include "mnist.h"
#include "model.h"
#include "optimize_job.h"
#include "optimize_report.h"
#include "parallel_errors.h"
#include "safetensors.h"
#include "start_images.h"
#include "train.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;
using testing_support::RunOutput;
using testing_support::slurp;

const std::string kModel = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn.safetensors";
const std::string kMnist = testing_support::mnist_dir();

class Sandbox : public testing_support::CliSandbox {
 public:
  Sandbox() : CliSandbox("nudge_hostile_") {}
  std::vector<std::string> leftovers() const {
    return CliSandbox::leftovers({"results.csv", "summary.json", "images.npy", "grid.png", "model.safetensors"});
  }
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

// Exit `code`, one stderr line "nudge: ..." holding `needle`, no result files or temporaries left.
void expect_refused(const Sandbox& box, const std::vector<std::string>& args, const std::string& needle, int code = 2,
                    const std::string& shell = "") {
  SCOPED_TRACE("nudge " + joined(args));
  const RunOutput r = box.run(args, "", shell);
  EXPECT_EQ(r.code, code) << "stderr: " << r.err;
  EXPECT_EQ(r.err.rfind("nudge: ", 0), 0u) << "stderr: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in stderr: " << r.err;
  EXPECT_EQ(joined(box.leftovers()), "") << "files left behind";
}

// A safetensors file with the given architecture metadata and tensors (values all `value`).
std::string model_bytes(const std::string& arch, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                        float value = 0.01f) {
  SafetensorsFile f;
  f.metadata["nudge.architecture"] = arch;
  for (const auto& [name, shape] : tensors) {
    Tensor t(shape);
    std::fill(t.data.begin(), t.data.end(), value);
    f.tensors.emplace_back(name, std::move(t));
  }
  return serialize_safetensors(f);
}

void write_png(const std::string& path, int side, uint8_t shade = 90) {
  write_png_gray(path, side, side, std::vector<uint8_t>(static_cast<size_t>(side) * side, shade));
}

// ---- 1: shape products in 64 bits, with caps checked when an architecture is parsed ---------------------------------

TEST(HostileInput, ShapeSizeIs64Bit) {
  const Shape3 s{1, 65536, 65536};
  EXPECT_EQ(s.size(), int64_t{1} << 32);  // was int: 0
}

TEST(HostileInput, ArchitectureCapsLayerSizes) {
  for (const char* text : {"1x65536x65536:flatten,dense10", "1x65536x65537:flatten,dense10", "1x100000x100000:flatten,dense10"}) {
    SCOPED_TRACE(text);
    try {
      Architecture::parse(text);
      ADD_FAILURE() << "parsed";
    } catch (const InputError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("values per image; the limit is 16777216"), std::string::npos) << m;
      EXPECT_EQ(m.find("1410065408"), std::string::npos) << "a wrapped product in the message: " << m;
    }
  }
  // conv100000k3 on 28x28 makes 67.6M values per image (defect 2's model); a dense layer of 2^29 weights.
  EXPECT_THROW(Architecture::parse("1x28x28:conv100000k3,pool26,flatten,dense10"), InputError);
  EXPECT_THROW(Architecture::parse("1x4096x4096:flatten,dense64"), InputError);
  std::string many = "1x4x4:";
  for (int i = 0; i < 300; ++i) many += "relu,";
  EXPECT_THROW(Architecture::parse(many + "flatten,dense2"), InputError);
  // From the long fuzz run (docs/fuzzing.md): reported as a 1 s timeout while the machine starved the fuzzer; alone it
  // is refused in microseconds.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(Architecture::parse("1x28x3dense8:c:con,conv4k3,relu,flatten,densdeens1x0"), InputError);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.5);
  // The reference architecture and a wide but legal one still parse.
  EXPECT_NO_THROW(Architecture::reference());
  EXPECT_NO_THROW(Architecture::parse("1x64x64:conv512k3,relu,pool2,flatten,dense10"));
}

TEST(HostileInput, HugeInputModelIsRefusedNotCrashed) {
  Sandbox box;
  // The 271-byte model: a 1x65536x65536 input and an empty dense weight.
  write_file_atomically(box.path("wrap.safetensors"),
                        model_bytes("1x65536x65536:flatten,dense10", {{"dense1.weight", {10, 0}}, {"dense1.bias", {10}}}));
  expect_refused(box, {"optimize", "--model", "wrap.safetensors", "--init", "noise", "--count", "2", "--target", "3",
                       "--quiet"},
                 "values per image");
  // Defect 2's model, without its 3.6 MB of weights: the architecture is refused before they are looked at.
  write_file_atomically(box.path("wide.safetensors"), model_bytes("1x28x28:conv100000k3,pool26,flatten,dense10", {}));
  expect_refused(box, {"optimize", "--model", "wide.safetensors", "--target", "3", "--quiet"}, "values per image");
}

// ---- 2: exceptions inside OpenMP regions leave through ParallelErrors, and main names out-of-memory -----------------

TEST(HostileInput, ParallelErrorsRethrowOutsideTheRegion) {
  ParallelErrors errors;
  int ran = 0;
#pragma omp parallel for schedule(static) reduction(+ : ran)
  for (int i = 0; i < 64; ++i) errors.run([&] {
    ++ran;
    if (i == 5) throw std::bad_alloc();
  });
  EXPECT_TRUE(errors.failed());
  EXPECT_GE(ran, 1);
  EXPECT_THROW(errors.rethrow(), std::bad_alloc);
  ParallelErrors fine;
  fine.run([] {});
  EXPECT_NO_THROW(fine.rethrow());
}

TEST(HostileInput, OutOfMemoryNamesTheSize) {
  try {
    with_memory_named("the test's buffer", 123456, []() -> int { throw std::bad_alloc(); });
    ADD_FAILURE() << "no throw";
  } catch (const OutOfMemory& e) {
    EXPECT_STREQ(e.what(), "out of memory: the test's buffer needs 123456 bytes");
  }
}

// ---- 3: --range is checked against the split before it is expanded --------------------------------------------------

TEST(HostileInput, HugeRangeRefusedAtOnce) {
  REQUIRE_MNIST();
  Sandbox box;
  const auto t0 = std::chrono::steady_clock::now();
  expect_refused(box, {"optimize", "--model", kModel, "--data", kMnist, "--init", "test", "--range", "0:2147483647",
                       "--target", "untargeted", "--quiet"},
                 "goes past the test split's 10000 images");
  expect_refused(box, {"optimize", "--model", kModel, "--data", kMnist, "--init", "test", "--range", "0:300000000",
                       "--target", "untargeted", "--quiet"},
                 "goes past");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 20.0) << "the range was expanded before it was checked";
  // A range inside the split still runs.
  const RunOutput ok = box.run({"optimize", "--model", kModel, "--data", kMnist, "--init", "test", "--range", "5:7",
                                "--target", "untargeted", "--steps", "2", "--quiet", "--out", "r"});
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(slurp(box.work() / "r" / "results.csv").find(",test:6,"), std::string::npos);
}

// ---- 4: non-finite values refused at the boundary --------------------------------------------------------------------

TEST(HostileInput, NonFiniteOptimizeFlagsRefused) {
  Sandbox box;
  const std::vector<std::string> base = {"optimize", "--model", kModel, "--target", "3", "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_refused(box, with({"--lr", "inf"}), "--lr: 'inf'");
  expect_refused(box, with({"--lr", "nan"}), "--lr: 'nan'");
  expect_refused(box, with({"--lr", "1e39"}), "--lr: '1e39'");  // finite as a double, infinite as a float
  expect_refused(box, with({"--loss", "cw", "--kappa", "nan"}), "--kappa: 'nan'");
  expect_refused(box, with({"--loss", "cw", "--kappa", "-1"}), "--kappa must be a finite number >= 0");
}

TEST(HostileInput, HugeWeightsRefusedOnLoad) {
  Sandbox box;
  Model m = Model::glorot(Architecture::parse("1x28x28:flatten,dense10"), 1);
  m.params[0].data[7] = 3e38f;
  m.save(box.path("huge.safetensors"));
  write_png(box.path("digit.png"), 28);
  expect_refused(box, {"predict", "--model", "huge.safetensors", "digit.png"}, "tensor dense1.weight holds 3e+38");
  expect_refused(box, {"optimize", "--model", "huge.safetensors", "--target", "3", "--quiet"}, "beyond the +-1e+06");
}

TEST(HostileInput, NonFiniteRowIsNotReportedAsASuccess) {
  testing_support::TempDir dir("nudge_hostile_report_");
  OptimizeReport report(dir.path().string(), 1, 2, 1, 2, 5);
  const std::vector<float> start = {0.5f, 0.5f}, image = {NAN, 0.5f};
  RowResult r;
  r.source_name = "noise:0";
  r.success = true;
  r.success_step = 0;
  r.probs = {0.5f, 0.5f};
  r.start = start.data();
  r.image = image.data();
  EXPECT_THROW(report.row(r), InputError);
  r.image = start.data();
  r.probs = {NAN, NAN};
  EXPECT_THROW(report.row(r), InputError);
}

TEST(HostileInput, TrainLrMustBeFinite) {
  Sandbox box;
  expect_refused(box, {"train", "--lr", "inf", "--data", kMnist}, "--lr");
  expect_refused(box, {"train", "--lr", "nan", "--data", kMnist}, "--lr");
}

TEST(HostileInput, DivergingTrainingStopsAndKeepsTheOldModel) {
  EXPECT_NO_THROW(check_loss_finite(12.5, 1, 1, 2, 0.001f));
  try {
    check_loss_finite(NAN, 2, 7, 9, 1e10f);
    ADD_FAILURE() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("training diverged: the loss is NaN at epoch 2, batch 7/9; lower --lr (now 1e+10)"),
              std::string::npos)
        << e.what();
  }
  REQUIRE_MNIST();
  Sandbox box;
  write_file_atomically(box.path("old.safetensors"), "the previous model");
  const RunOutput r = box.run({"train", "--data", kMnist, "--arch", "1x28x28:conv4k3,relu,pool2,flatten,dense10",
                               "--lr", "1e10", "--limit", "2000", "--epochs", "1", "--out", "old.safetensors",
                               "--device", "cpu"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("training diverged"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(box.work() / "old.safetensors"), "the previous model") << "a diverged run replaced --out";
  EXPECT_EQ(joined(box.leftovers()), "");
}

// ---- 5: the report's size follows the work done ----------------------------------------------------------------------

TEST(HostileInput, SummaryFollowsUpdatesNotTheStepBudget) {
  Sandbox box;
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", "noise", "--count", "1", "--target", "3",
                               "--stop-at", "0.5", "--steps", "2147483647", "--quiet", "--out", "o", "--device", "cpu"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string text = slurp(box.work() / "o" / "summary.json");
  EXPECT_LT(text.size(), 20000u) << "summary.json grows with --steps";
  const nlohmann::json s = nlohmann::json::parse(text);
  EXPECT_EQ(s.at("successes").get<long>(), 1);
  const auto by_step = s.at("success_rate_by_step").get<std::vector<double>>();
  EXPECT_EQ(by_step.size(), static_cast<size_t>(s.at("median_steps_to_success").get<double>()) + 1);
  EXPECT_DOUBLE_EQ(by_step.back(), 1.0);
}

TEST(HostileInput, RestartsBoundedAndMeaningful) {
  Sandbox box;
  const std::vector<std::string> base = {"optimize", "--model", kModel, "--target", "3", "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_refused(box, with({"--eps", "0.1", "--norm", "linf", "--random-start", "--restarts", "2147483647"}),
                 "--restarts 2147483647: must be 1 to 1000");
  expect_refused(box, with({"--restarts", "5"}), "--restarts 5 without --random-start");
}

// ---- 6: image extensions in any case ---------------------------------------------------------------------------------

TEST(HostileInput, UpperCaseExtensionsAreImages) {
  EXPECT_TRUE(has_image_extension("A.PNG"));
  EXPECT_TRUE(has_image_extension("b.Pgm"));
  EXPECT_TRUE(has_image_extension("c.png"));
  EXPECT_FALSE(has_image_extension(".png"));
  EXPECT_FALSE(has_image_extension("d.jpg"));
  Sandbox box;
  fs::create_directory(box.work() / "starts");
  write_png(box.path("starts/A.PNG"), 28);
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", "starts", "--target", "3", "--steps", "1",
                               "--quiet", "--out", "o"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(slurp(box.work() / "o" / "results.csv").find("starts/A.PNG"), std::string::npos);
}

// ---- 7: only regular files are read, and headers are checked first ---------------------------------------------------

TEST(HostileInput, FifoIsRefusedNotRead) {
  testing_support::TempDir dir("nudge_hostile_fifo_");
  const std::string fifo = dir.file("a.png");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Before the fix, opening the FIFO blocked forever (no writer).
  EXPECT_THROW(read_file(fifo), InputError);
  EXPECT_THROW(read_image(fifo), InputError);
  OptimizeJob job;
  job.init = InitKind::Images;
  job.image_dir = dir.path().string();
  try {
    StartImages starts(job, nullptr, 28, 28);
    ADD_FAILURE() << "a FIFO was taken as an image";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
}

// A PNG whose header says side x side while its image data holds 8x8 pixels: only a decode can notice the mismatch.
std::string png_with_bad_data(int side) {
  testing_support::TempDir dir("nudge_hostile_png_");
  write_png(dir.file("x.png"), 8);
  std::string bytes = read_file(dir.file("x.png"));
  // IHDR's width and height are at bytes 16..23 (big-endian), its CRC (over type and data, bytes 12..28) at 29..32.
  for (int i = 0; i < 2; ++i)
    for (int b = 0; b < 4; ++b) bytes[16 + 4 * i + b] = static_cast<char>((side >> (24 - 8 * b)) & 0xff);
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(bytes.data() + 12), 17);
  for (int b = 0; b < 4; ++b) bytes[29 + b] = static_cast<char>((crc >> (24 - 8 * b)) & 0xff);
  return bytes;
}

TEST(HostileInput, WantedImageSizeIsCheckedBeforeDecoding) {
  const std::string big = png_with_bad_data(8192);
  try {
    parse_png(big, "big.png", {28, 28});
    ADD_FAILURE() << "decoded";
  } catch (const InputError& e) {
    // With the wanted size the reader stops at the header; without it, it decodes and finds the data short.
    EXPECT_STREQ(e.what(), "big.png is 8192x8192; the model takes 28x28");
  }
  EXPECT_THROW(parse_png(big, "big.png"), InputError);
  const std::string pgm = "P2 8192 8192 255\n0 0 0\n";
  try {
    parse_pgm(pgm, "big.pgm", {28, 28});
    ADD_FAILURE() << "decoded";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "big.pgm is 8192x8192; the model takes 28x28");
  }
  // A short ASCII PGM is refused before its pixels are allocated.
  try {
    parse_pgm(pgm, "big.pgm");
    ADD_FAILURE() << "decoded";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("needs 67108864 values, the file has"), std::string::npos) << e.what();
  }
}

// AddressSanitizer reserves terabytes of address space for its shadow memory, so a binary built with it cannot start
// under an address-space limit.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

TEST(HostileInput, LargeModelFileRefusedFromItsHeader) {
  // A 2 GiB sparse file whose first 8 bytes claim an absurd header: read whole, it cannot fit under the 1 GiB
  // address-space limit the command runs with, so only the header check first gives the precise message.
  Sandbox box;
  {
    std::string head(8, '\0');
    head[5] = 0x10;  // 2^44 bytes of header
    write_file_atomically(box.path("big.safetensors"), head);
    ASSERT_EQ(::truncate(box.path("big.safetensors").c_str(), off_t{2} << 30), 0);
  }
  EXPECT_THROW(read_file(box.path("big.safetensors"), 1000), InputError);
  write_png(box.path("digit.png"), 28);
  if (kAddressSanitizer) GTEST_SKIP() << "built with AddressSanitizer: no address-space limit possible";
  expect_refused(box, {"predict", "--model", "big.safetensors", "digit.png"}, "is absurd", 2, "ulimit -v 1048576;");
}

// ---- 8: results.csv quotes names as RFC 4180 says --------------------------------------------------------------------

// Splits RFC 4180 text into records of fields.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> records(1, std::vector<std::string>(1));
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        records.back().back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        records.back().back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      records.back().emplace_back();
    } else if (c == '\n') {
      records.emplace_back(1);
    } else {
      records.back().back() += c;
    }
  }
  if (records.back().size() == 1 && records.back()[0].empty()) records.pop_back();
  return records;
}

TEST(HostileInput, CsvFieldQuoting) {
  EXPECT_EQ(csv_field("plain.png"), "plain.png");
  EXPECT_EQ(csv_field("x,y.png"), "\"x,y.png\"");
  EXPECT_EQ(csv_field("q\"uote.png"), "\"q\"\"uote.png\"");
  EXPECT_EQ(csv_field("new\nline.png"), "\"new\nline.png\"");
}

TEST(HostileInput, ResultsCsvSurvivesOddFileNames) {
  Sandbox box;
  fs::create_directory(box.work() / "s");
  const std::vector<std::string> names = {"x,y.png", "q\"uote.png", "new\nline.png", "plain.png"};
  for (const std::string& n : names) write_png(box.path("s/" + n), 28);
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", "s", "--target", "3", "--steps", "1",
                               "--quiet", "--out", "o"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto records = parse_csv(slurp(box.work() / "o" / "results.csv"));
  ASSERT_EQ(records.size(), names.size() + 1);
  std::vector<std::string> sources;
  for (size_t i = 1; i < records.size(); ++i) {
    EXPECT_EQ(records[i].size(), records[0].size()) << "row " << i;
    sources.push_back(records[i].at(1));
  }
  std::vector<std::string> expected;
  for (const std::string& n : names) expected.push_back("s/" + n);
  std::sort(expected.begin(), expected.end());
  std::sort(sources.begin(), sources.end());
  EXPECT_EQ(sources, expected);
}

// ---- 9: every flag value is used or refused --------------------------------------------------------------------------

TEST(HostileInput, IgnoredFlagValuesRefused) {
  Sandbox box;
  const std::vector<std::string> base = {"optimize", "--model", kModel, "--target", "3", "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_refused(box, with({"--stop-at", "nan"}), "--stop-at: 'nan'");
  expect_refused(box, with({"--stop-at", "0"}), "--stop-at: '0' is not a probability in (0, 1]");
  expect_refused(box, with({"--stop-kl", "nan"}), "--stop-kl: 'nan'");
  expect_refused(box, with({"--stop-kl", "-5"}), "--stop-kl: '-5' must be >= 0");
  expect_refused(box, with({"--tv", "nan"}), "--tv must be a finite number (got ");
  expect_refused(box, with({"--l2-center", "nan"}), "--l2-center must be in [0, 1]");
  expect_refused(box, with({"--chunk", "0"}), "--chunk 0: must be at least 1");
  expect_refused(box, with({"--chunk", "-1"}), "--chunk -1: must be at least 1");
  expect_refused(box, with({"--seed", "-1"}), "--seed");
  expect_refused(box, with({"--seed", "12345678901234567890123"}), "--seed");
  expect_refused(box, with({"--init", "gray", "--count", "0"}), "--count must be >= 1");
  fs::create_directory(box.work() / "starts");
  write_png(box.path("starts/a.png"), 28);
  expect_refused(box, with({"--init", "starts", "--count", "3"}), "--count 3: --init starts uses every image");
}

TEST(HostileInput, DatasetCountMustFitTheSplit) {
  REQUIRE_MNIST();
  Sandbox box;
  const std::vector<std::string> base = {"optimize", "--model", kModel, "--data", kMnist, "--init", "test",
                                         "--target", "untargeted", "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_refused(box, with({"--count", "0"}), "--count must be >= 1 (got 0)");
  expect_refused(box, with({"--count", "-5"}), "--count must be >= 1 (got -5)");
  expect_refused(box, with({"--count", "20000"}), "--count 20000: the test split has 10000 images");
  expect_refused(box, with({"--count", "4", "--indices", "1,2"}), "--count 4 is ignored with --indices/--range");
}

TEST(HostileInput, JudgeComparedAsAFileNotAString) {
  Sandbox box;
  fs::create_directories(box.work() / "data" / "models");
  fs::copy_file(kModel, box.work() / "data" / "models" / "mnist_cnn.safetensors");
  expect_refused(box, {"optimize", "--target", "3", "--quiet", "--judge", "./data/models/mnist_cnn.safetensors"},
                 "is also an optimized-against model");
}

// ---- 10: I/O failures named, no empty output folder, a real stdio buffer ----------------------------------------------

TEST(HostileInput, FullDiskIsAnIoError) {
  Sandbox box;
  // A 64 KiB file-size limit with SIGXFSZ ignored: writes past it fail with EFBIG, as a full disk fails with ENOSPC.
  expect_refused(box, {"optimize", "--model", kModel, "--init", "noise", "--count", "200", "--target", "3",
                       "--steps", "1", "--quiet", "--out", "o", "--device", "cpu"},
                 "I/O error: write to o/", 1, "ulimit -f 128; trap '' XFSZ;");
}

TEST(HostileInput, NoEmptyOutputFolderAfterAFailedCheck) {
  Sandbox box;
  expect_refused(box, {"optimize", "--model", kModel, "--target", "3", "--quiet", "--out", "new/out", "--path", "bogus"},
                 "bogus");
  expect_refused(box, {"optimize", "--model", kModel, "--target", "3", "--quiet", "--out", "new/out", "--device", "tpu"},
                 "tpu");
  EXPECT_FALSE(fs::exists(box.work() / "new")) << "an empty output folder was left behind";
  // A folder that already existed stays.
  fs::create_directory(box.work() / "kept");
  expect_refused(box, {"optimize", "--model", kModel, "--target", "3", "--quiet", "--out", "kept", "--device", "tpu"},
                 "tpu");
  EXPECT_TRUE(fs::exists(box.work() / "kept"));
}

TEST(HostileInput, AtomicFileBuffersAMebibyte) {
  testing_support::TempDir dir("nudge_hostile_buffer_");
  const std::string path = dir.file("out.bin");
  AtomicFile f(path);
  const std::string row(3136, 'x');  // one images.npy row
  for (int i = 0; i < 100; ++i) f.write(row);  // 306 KiB: stdio's own 4 KiB buffer would have written most of it
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  struct stat st;
  ASSERT_EQ(::stat(temp.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0) << "the writes went out in small pieces";
  f.commit();
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 313600);
}

// Found by the job_spec fuzzer: a start folder whose name is not UTF-8 made the summary's JSON dump throw, after
// the whole job had run ("internal error", exit 1, no summary). Such bytes are now written as U+FFFD.
TEST(HostileInput, NonUtf8FolderNameStillGetsASummary) {
  Sandbox box;
  const std::string dir = box.path("gau\xd5\xd5s");
  std::filesystem::create_directories(dir);
  write_png_gray(dir + "/a.png", 28, 28, std::vector<uint8_t>(28 * 28, 100));
  const RunOutput r = box.run({"optimize", "--model", kModel, "--init", dir, "--target", "3", "--steps", "2", "--quiet",
                               "--out", "out"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json summary = nlohmann::json::parse(slurp(box.path("out/summary.json")));
  EXPECT_NE(summary.dump().find("\xef\xbf\xbd"), std::string::npos) << "the bytes replaced by U+FFFD";
}

}  // namespace
}  // namespace nudge
