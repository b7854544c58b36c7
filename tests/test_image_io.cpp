// Image and array files: PNG round trips and conversions, PGM parsing with a table of malformed files (each must
// raise InputError naming the problem), the .npy header layout, the streaming writer's count check, and the
// contact sheet / image grid dimensions against the layout formulas documented in contact_sheet.h.
#include "image_io.h"

#include <gtest/gtest.h>
#include <png.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <random>

#include "atomic_file.h"
#include "contact_sheet.h"
#include "errors.h"
#include "temp_dir.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;

// A private directory under the GoogleTest temp dir, removed afterwards.
struct TempDir : testing_support::TempDir {
  TempDir() : testing_support::TempDir("nudge_image_io_") {}
};

template <class E>
void expect_throw_containing(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one containing '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng() & 0xff);
  v.front() = 0;  // make sure both extremes occur
  v.back() = 255;
  return v;
}

// A PNG chunk with its CRC, for hand-made headers.
std::string png_chunk(const std::string& type, const std::string& data) {
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
  };
  const std::string body = type + data;
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : body) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return be32(static_cast<uint32_t>(data.size())) + body + be32(crc ^ 0xffffffffu);
}

// ---- PNG ----------------------------------------------------------------------------------------------------------

TEST(Png, GrayRoundTripIsExact) {
  TempDir dir;
  const int w = 37, h = 23;
  const std::vector<uint8_t> gray = random_bytes(size_t(w) * h, 1);
  write_png_gray(dir.file("g.png"), w, h, gray);
  EXPECT_EQ(dir.entries(), 1u);  // no temporary file left behind
  for (const GrayImage& img : {read_png(dir.file("g.png")), read_image(dir.file("g.png"))}) {
    ASSERT_EQ(img.width, w);
    ASSERT_EQ(img.height, h);
    ASSERT_EQ(img.pixels.size(), gray.size());
    for (size_t i = 0; i < gray.size(); ++i) ASSERT_EQ(img.pixels[i], gray[i] / 255.0f) << "pixel " << i;
  }
}

TEST(Png, RgbBecomesLuminance) {
  TempDir dir;
  // Row 0: R=G=B grays (exact); row 1: pure red, green, blue.
  const std::vector<uint8_t> rgb = {0, 0, 0, 17, 17, 17, 200, 200, 200, 255, 0, 0, 0, 255, 0, 0, 0, 255};
  write_png_rgb(dir.file("c.png"), 3, 2, rgb);
  const GrayImage img = read_png(dir.file("c.png"));
  ASSERT_EQ(img.width, 3);
  ASSERT_EQ(img.height, 2);
  EXPECT_EQ(img.pixels[0], 0.0f);
  EXPECT_EQ(img.pixels[1], 17 / 255.0f);
  EXPECT_EQ(img.pixels[2], 200 / 255.0f);
  // PIL: Image.new("RGB", (1, 1), c).convert("L") gives 76, 150, 29 for pure red, green, blue.
  EXPECT_EQ(img.pixels[3], 76 / 255.0f);
  EXPECT_EQ(img.pixels[4], 150 / 255.0f);
  EXPECT_EQ(img.pixels[5], 29 / 255.0f);
}

TEST(Png, AlphaIsCompositedOnBlackAndSixteenBitIsScaled) {
  TempDir dir;
  {
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = 3;
    image.height = 1;
    image.format = PNG_FORMAT_GA;
    const uint8_t ga[] = {200, 255, 200, 128, 200, 0};
    ASSERT_TRUE(png_image_write_to_file(&image, dir.file("ga.png").c_str(), 0, ga, 0, nullptr)) << image.message;
    const GrayImage img = read_png(dir.file("ga.png"));
    ASSERT_EQ(img.pixels.size(), 3u);
    EXPECT_FLOAT_EQ(img.pixels[0], 200 / 255.0f);
    EXPECT_FLOAT_EQ(img.pixels[1], (200 / 255.0f) * (128 / 255.0f));
    EXPECT_EQ(img.pixels[2], 0.0f);
  }
  {
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = 3;
    image.height = 1;
    image.format = PNG_FORMAT_LINEAR_Y;  // 16-bit gray
    const uint16_t y[] = {0, 257 * 100, 65535};
    ASSERT_TRUE(png_image_write_to_file(&image, dir.file("y16.png").c_str(), 0, y, 0, nullptr)) << image.message;
    const GrayImage img = read_png(dir.file("y16.png"));
    ASSERT_EQ(img.pixels.size(), 3u);
    EXPECT_EQ(img.pixels[0], 0.0f);
    EXPECT_EQ(img.pixels[1], 100 / 255.0f);
    EXPECT_EQ(img.pixels[2], 1.0f);
  }
}

TEST(Png, PaletteAndRgbaAreConverted) {
  TempDir dir;
  {
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = 3;
    image.height = 1;
    image.format = PNG_FORMAT_RGB_COLORMAP;
    image.colormap_entries = 2;
    const uint8_t colormap[] = {255, 0, 0, 10, 10, 10};
    const uint8_t index[] = {0, 1, 1};
    ASSERT_TRUE(png_image_write_to_file(&image, dir.file("p.png").c_str(), 0, index, 0, colormap)) << image.message;
    const GrayImage img = read_png(dir.file("p.png"));
    const std::vector<float> want = {76 / 255.0f, 10 / 255.0f, 10 / 255.0f};
    EXPECT_EQ(img.pixels, want);
  }
  {
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = 2;
    image.height = 1;
    image.format = PNG_FORMAT_RGBA;
    const uint8_t rgba[] = {0, 255, 0, 255, 90, 90, 90, 51};
    ASSERT_TRUE(png_image_write_to_file(&image, dir.file("rgba.png").c_str(), 0, rgba, 0, nullptr)) << image.message;
    const GrayImage img = read_png(dir.file("rgba.png"));
    ASSERT_EQ(img.pixels.size(), 2u);
    EXPECT_EQ(img.pixels[0], 150 / 255.0f);
    EXPECT_FLOAT_EQ(img.pixels[1], (90 / 255.0f) * (51 / 255.0f));
  }
}

TEST(Png, CorruptFilesAreInputErrors) {
  TempDir dir;
  write_png_gray(dir.file("ok.png"), 16, 16, random_bytes(256, 2));
  const std::string good = read_file(dir.file("ok.png"));

  expect_throw_containing<InputError>([&] { parse_png(good.substr(0, good.size() / 2), "half.png"); },
                                      "half.png: corrupt PNG");
  std::string flipped = good;
  flipped[40] ^= 0x55;  // inside a chunk: its CRC no longer matches
  expect_throw_containing<InputError>([&] { parse_png(flipped, "flip.png"); }, "flip.png: corrupt PNG");

  const std::string sig("\x89PNG\r\n\x1a\n", 8);
  auto ihdr = [](uint32_t w, uint32_t h) {
    std::string d;
    for (uint32_t v : {w, h})
      for (int s = 24; s >= 0; s -= 8) d += char((v >> s) & 0xff);
    return d + std::string("\x08\x00\x00\x00\x00", 5);  // 8-bit gray, deflate, no filter, no interlace
  };
  expect_throw_containing<InputError>(
      [&] {
        parse_png(sig + png_chunk("IHDR", ihdr(20000, 20000)) + png_chunk("IDAT", "") + png_chunk("IEND", ""),
                  "big.png");
      },
      "big.png: image is 20000x20000, larger than nudge accepts");
  expect_throw_containing<InputError>(
      [&] { parse_png(sig + png_chunk("IHDR", ihdr(0, 5)), "zero.png"); }, "zero.png: corrupt PNG");

  write_file_atomically(dir.file("text.png"), "hello, not a png\n");
  expect_throw_containing<InputError>([&] { read_png(dir.file("text.png")); }, "text.png: not a PNG file");
  expect_throw_containing<InputError>([&] { read_image(dir.file("text.png")); }, "text.png: not a PNG or PGM image");
  expect_throw_containing<InputError>([&] { read_image(dir.file("missing.png")); }, "cannot read");
}

TEST(Png, WriterChecksBufferSize) {
  TempDir dir;
  expect_throw_containing<InternalError>([&] { write_png_rgb(dir.file("x.png"), 4, 4, std::vector<uint8_t>(47)); },
                                         "needs 48 bytes, got 47");
  EXPECT_EQ(dir.entries(), 0u);
}

// ---- PGM ----------------------------------------------------------------------------------------------------------

TEST(Pgm, BinaryWithComments) {
  const std::string bytes =
      std::string("P5\n# made by hand\n3 # width\n2\n255\n") + std::string("\x00\x10\x80\xff\x01\x02", 6);
  const GrayImage img = parse_pgm(bytes, "a.pgm");
  ASSERT_EQ(img.width, 3);
  ASSERT_EQ(img.height, 2);
  const std::vector<float> want = {0, 16 / 255.0f, 128 / 255.0f, 1, 1 / 255.0f, 2 / 255.0f};
  EXPECT_EQ(img.pixels, want);
  EXPECT_EQ(parse_image(bytes, "a.pgm").pixels, want);
}

TEST(Pgm, BinarySixteenBitIsBigEndian) {
  const std::string bytes = std::string("P5 2 2 1000\n") + std::string("\x00\x00\x01\xf4\x03\xe8\x00\x01", 8);
  const GrayImage img = parse_pgm(bytes, "b.pgm");
  const std::vector<float> want = {0, 500 / 1000.0f, 1, 1 / 1000.0f};
  EXPECT_EQ(img.pixels, want);
}

TEST(Pgm, AsciiWithComments) {
  const GrayImage img = parse_pgm("P2\n# comment\n2 3\n15\n0 15 # end of row\n7\n8 1\n\n2 3\n", "c.pgm");
  ASSERT_EQ(img.width, 2);
  ASSERT_EQ(img.height, 3);
  const std::vector<float> want = {0, 1, 7 / 15.0f, 8 / 15.0f, 1 / 15.0f, 2 / 15.0f};
  EXPECT_EQ(img.pixels, want);
}

TEST(Pgm, MalformedFilesAreInputErrors) {
  struct Case {
    std::string bytes, needle;
  };
  const std::vector<Case> cases = {
      {"P6\n3 2\n255\n", "not a PGM file"},
      {"P5", "file ends before the width"},
      {"P53 2 255\n", "expected whitespace after the magic"},
      {"P5\n3 x\n255\n", "expected the height"},
      {"P5\n3 2\n", "file ends before the maxval"},
      {"P5\n0 5\n255\n", "image is 0x5; both must be at least 1"},
      {"P5\n5 0\n255\n", "image is 5x0"},
      {"P5\n3 2\n0\n", "maxval is 0; it must be 1..65535"},
      {"P5\n3 2\n70000\n", "maxval is 70000"},
      {"P5\n9999999999 2\n255\n", "width at byte 3 is too large"},
      {"P5\n100000 100000\n255\n", "image is 100000x100000, larger than nudge accepts"},
      {"P5\n9000 9000\n255\n", "larger than nudge accepts"},  // each side fits, the pixel count does not
      {"P5\n3 2\n255", "file ends before the pixel data"},
      {"P5\n3 2\n255\n" + std::string(5, 'x'), "pixel data truncated: 3x2 needs 6 bytes, the file has 5"},
      {"P5\n2 2\n300\n" + std::string(7, '\0'), "needs 8 bytes, the file has 7"},
      {"P5\n1 1\n100\n\xc8", "pixel 0 is 200, above maxval 100"},
      {"P2\n2 2\n10\n1 2 3\n", "pixel data truncated: found 3 of 4 values"},
      {"P2\n2 2\n10\n1 2 3 11\n", "pixel 3 is 11, above maxval 10"},
      {"P2\n2 1\n10\n1 -2\n", "expected the pixel value"},
      {"P2\n2 1\n10\n1 2x\n", "expected the pixel value"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("input: " + c.bytes.substr(0, 40));
    expect_throw_containing<InputError>([&] { parse_pgm(c.bytes, "m.pgm"); }, "m.pgm: ");
    expect_throw_containing<InputError>([&] { parse_pgm(c.bytes, "m.pgm"); }, c.needle);
  }
  expect_throw_containing<InputError>([] { parse_image("P6\n1 1\n255\n\x01", "p.ppm"); }, "not a PNG or PGM image");
  expect_throw_containing<InputError>([] { parse_image("", "empty"); }, "empty: not a PNG or PGM image");

  TempDir dir;
  write_file_atomically(dir.file("t.pgm"), "P5\n4 4\n255\nabc");
  expect_throw_containing<InputError>([&] { read_pgm(dir.file("t.pgm")); }, dir.file("t.pgm") + ": bad PGM file");
  expect_throw_containing<InputError>([&] { read_image(dir.file("t.pgm")); }, "truncated");
}

// ---- NPY ----------------------------------------------------------------------------------------------------------

struct ParsedNpy {
  std::string header;  // the dict text including padding and '\n'
  std::string data;
};

ParsedNpy split_npy(const std::string& bytes) {
  ParsedNpy p;
  EXPECT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), std::string("\x93NUMPY", 6));
  EXPECT_EQ(bytes[6], 1);  // version 1.0
  EXPECT_EQ(bytes[7], 0);
  const size_t header_len = size_t(uint8_t(bytes[8])) | size_t(uint8_t(bytes[9])) << 8;
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_LE(10 + header_len, bytes.size());
  p.header = bytes.substr(10, header_len);
  p.data = bytes.substr(10 + header_len);
  EXPECT_EQ(p.header.back(), '\n');
  return p;
}

TEST(Npy, HeaderAndDataLayout) {
  TempDir dir;
  std::vector<float> v(3 * 28 * 28);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f * float(i) - 7.0f;
  write_npy_f32(dir.file("a.npy"), {3, 28, 28}, v.data());
  const ParsedNpy p = split_npy(read_file(dir.file("a.npy")));
  EXPECT_EQ(p.header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 28, 28), }", 0), 0u) << p.header;
  EXPECT_EQ(p.header.find_first_not_of(' ', p.header.find('}') + 1), p.header.size() - 1);  // spaces, then '\n'
  ASSERT_EQ(p.data.size(), v.size() * sizeof(float));
  EXPECT_EQ(0, std::memcmp(p.data.data(), v.data(), p.data.size()));
  EXPECT_EQ(dir.entries(), 1u);

  EXPECT_NE(npy_header_f32({5}).find("'shape': (5,), }"), std::string::npos);
  EXPECT_NE(npy_header_f32({}).find("'shape': (), }"), std::string::npos);
  EXPECT_NE(npy_header_f32({0, 10}).find("'shape': (0, 10), }"), std::string::npos);
  for (const auto& shape : std::vector<std::vector<int64_t>>{{}, {5}, {1, 2, 3, 4, 5, 6, 7, 8}, {100000, 1}})
    EXPECT_EQ(npy_header_f32(shape).size() % 64, 0u);
  expect_throw_containing<InternalError>([] { npy_header_f32({3, -1}); }, "negative dimension");
}

TEST(Npy, StreamWriterMatchesWholeWriter) {
  TempDir dir;
  std::vector<float> v(10 * 7);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) / 3.0f;
  write_npy_f32(dir.file("whole.npy"), {10, 7}, v.data());
  {
    NpyStreamWriter w(dir.file("stream.npy"), {10, 7});
    for (size_t row = 0; row < 10; ++row) w.append(v.data() + row * 7, 7);
    EXPECT_EQ(w.written(), 70u);
    EXPECT_FALSE(fs::exists(dir.file("stream.npy")));  // nothing at the final path until commit
    w.commit();
  }
  EXPECT_EQ(read_file(dir.file("whole.npy")), read_file(dir.file("stream.npy")));
  EXPECT_EQ(dir.entries(), 2u);
}

TEST(Npy, StreamWriterWrongCountLeavesNoFile) {
  TempDir dir;
  std::vector<float> v(100, 1.0f);
  {
    NpyStreamWriter w(dir.file("short.npy"), {3, 28, 28});
    w.append(v.data(), 100);
    expect_throw_containing<InternalError>([&] { w.commit(); }, "wrote 100 floats but shape [3,28,28] needs 2352");
  }
  {
    NpyStreamWriter w(dir.file("long.npy"), {2, 5});
    w.append(v.data(), 6);
    expect_throw_containing<InternalError>([&] { w.append(v.data(), 5); }, "would pass the 10");
  }
  EXPECT_FALSE(fs::exists(dir.file("short.npy")));
  EXPECT_FALSE(fs::exists(dir.file("long.npy")));
  EXPECT_EQ(dir.entries(), 0u);  // temporaries removed too
}

// ---- contact sheet and grid ---------------------------------------------------------------------------------------

std::vector<float> random_image(int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(size_t(w) * h);
  for (auto& x : v) x = u(rng);
  return v;
}

TEST(ContactSheet, DimensionsFollowTheDocumentedLayout) {
  TempDir dir;
  const std::vector<float> white(28 * 28, 1.0f), black(28 * 28, 0.0f), noise = random_image(28, 28, 3);
  std::vector<SheetCell> cells;
  for (int i = 0; i < 5; ++i) cells.push_back({i == 4 ? nullptr : black.data(), white.data(), 28, 28, "+7 > 3 99%"});
  cells[2].result = noise.data();

  // scale 3, t = 1: cell_w = 2*28*3 + 2 = 170; one caption line: cell_h = 84 + 3 + 9 = 96;
  // 3 columns, 2 rows: 3*170 + 4*4 = 526 wide, 2*96 + 3*4 = 204 high.
  write_contact_sheet(dir.file("s.png"), cells, 3, 3);
  GrayImage img = read_png(dir.file("s.png"));
  EXPECT_EQ(img.width, 526);
  EXPECT_EQ(img.height, 204);
  auto at = [&](int x, int y) { return img.pixels[size_t(y) * img.width + x]; };
  EXPECT_EQ(at(4, 4), 0.0f);                  // cell 0 start: black, at the top-left margin
  EXPECT_EQ(at(4 + 84 + 2, 4), 1.0f);         // cell 0 result: white, after the 2 px gap
  EXPECT_EQ(at(4 + 84 + 2 + 83, 4 + 83), 1.0f);
  EXPECT_NE(at(4 + 84, 4), 0.0f);             // the gap is background, not image
  EXPECT_EQ(at(4 + 170 + 4 + 86 + 83, 4 + 96 + 4 + 83), 1.0f);  // cell 4 (row 1, column 1) result corner

  // Long captions wrap (28 characters per line) and cap at 3 lines: cell_h = 84 + 3 + 27 = 114.
  cells[1].caption = "-this caption is long enough that it needs to wrap over several lines of text to fit";
  write_contact_sheet(dir.file("s2.png"), cells, 10, 3);
  img = read_png(dir.file("s2.png"));
  EXPECT_EQ(img.width, 5 * 170 + 6 * 4);  // columns clamp to the 5 cells
  EXPECT_EQ(img.height, 114 + 2 * 4);

  // Results only, scale 6 (t = 2): cell_w = 168, cell_h = 168 + 3 + 18 = 189; 2 columns x 1 row.
  std::vector<SheetCell> only = {{nullptr, white.data(), 28, 28, "a"}, {nullptr, noise.data(), 28, 28, ""}};
  write_contact_sheet(dir.file("s3.png"), only, 4, 6);
  img = read_png(dir.file("s3.png"));
  EXPECT_EQ(img.width, 2 * 168 + 3 * 4);
  EXPECT_EQ(img.height, 189 + 2 * 4);

  // No captions at all: no caption area.
  only[0].caption = "";
  write_contact_sheet(dir.file("s4.png"), only, 1, 1);
  img = read_png(dir.file("s4.png"));
  EXPECT_EQ(img.width, 28 + 2 * 4);
  EXPECT_EQ(img.height, 2 * 28 + 3 * 4);
  EXPECT_EQ(dir.entries(), 4u);
}

TEST(ContactSheet, RejectsBadArguments) {
  TempDir dir;
  const std::vector<float> img(4, 0.5f);
  const std::vector<SheetCell> cells = {{nullptr, img.data(), 2, 2, "x"}};
  expect_throw_containing<InputError>([&] { write_contact_sheet(dir.file("a.png"), cells, 0); }, "columns");
  expect_throw_containing<InputError>([&] { write_contact_sheet(dir.file("a.png"), cells, 1, 0); }, "scale");
  expect_throw_containing<InputError>([&] { write_contact_sheet(dir.file("a.png"), {}, 1); }, "no images");
  expect_throw_containing<InternalError>(
      [&] { write_contact_sheet(dir.file("a.png"), {{img.data(), nullptr, 2, 2, ""}}, 1); }, "no result image");
  expect_throw_containing<InputError>(
      [&] { write_image_grid(dir.file("a.png"), std::vector<const float*>(100000, img.data()), 2, 2, 1, 64); },
      "would be");
  EXPECT_EQ(dir.entries(), 0u);
}

TEST(ImageGrid, DimensionsFollowTheDocumentedLayout) {
  TempDir dir;
  std::vector<std::vector<float>> store;
  std::vector<const float*> images;
  for (int i = 0; i < 40; ++i) store.push_back(random_image(28, 28, 100 + i));
  for (auto& s : store) images.push_back(s.data());
  images[5] = nullptr;  // stays empty
  std::vector<std::string> labels;
  for (int r = 0; r < 10; ++r) labels.push_back(std::to_string(r));

  // scale 2, t = 1, labels of 1 char: label_w = 4 + 6 = 10; 4 columns, 10 rows of 56 px tiles.
  write_image_grid(dir.file("g.png"), images, 28, 28, 4, 2, labels);
  const GrayImage img = read_png(dir.file("g.png"));
  EXPECT_EQ(img.width, 10 + 4 * 56 + 5 * 2);
  EXPECT_EQ(img.height, 10 * 56 + 11 * 2);
  // Top-left pixel of image 0 lands at (label_w + 2, 2), and is 2x2 nearest-neighbour.
  const float want = std::lround(store[0][0] * 255.0f) / 255.0f;
  EXPECT_EQ(img.pixels[2 * img.width + 12], want);
  EXPECT_EQ(img.pixels[3 * img.width + 13], want);

  write_image_grid(dir.file("plain.png"), images, 28, 28, 40, 1);
  const GrayImage plain = read_png(dir.file("plain.png"));
  EXPECT_EQ(plain.width, 40 * 28 + 41 * 2);
  EXPECT_EQ(plain.height, 28 + 2 * 2);
  expect_throw_containing<InternalError>([&] { write_image_grid(dir.file("x.png"), images, 28, 28, 40, 1, labels); },
                                         "10 row labels for 1 rows");
}

}  // namespace
}  // namespace nudge
