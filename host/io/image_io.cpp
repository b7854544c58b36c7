#include "image_io.h"

#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <utility>

#include "errors.h"

// .npy promises '<f4' and the data is written with fwrite straight from memory.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nudge writes little-endian .npy files straight from memory; this host is big-endian"
#endif

namespace nudge {

namespace {

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

bool has_png_signature(const std::string& bytes) {
  return bytes.size() >= 8 && std::memcmp(bytes.data(), kPngSignature, 8) == 0;
}

bool has_pgm_magic(const std::string& bytes) {
  return bytes.size() >= 2 && bytes[0] == 'P' && (bytes[1] == '5' || bytes[1] == '2');
}

// Width and height are already known to be positive.
void check_image_size(int64_t width, int64_t height, const std::string& what) {
  if (width > kMaxImageSide || height > kMaxImageSide || width * height > kMaxImagePixels)
    throw InputError(what + ": image is " + std::to_string(width) + "x" + std::to_string(height) +
                     ", larger than nudge accepts (" + std::to_string(kMaxImageSide) + " per side, " +
                     std::to_string(kMaxImagePixels) + " pixels)");
}

// A size the caller cannot use, from the header alone.
void check_wanted_size(int64_t width, int64_t height, ImageSize want, const std::string& what) {
  if (!want.any() && (width != want.width || height != want.height))
    throw InputError(what + " is " + std::to_string(width) + "x" + std::to_string(height) + "; the model takes " +
                     std::to_string(want.width) + "x" + std::to_string(want.height));
}

// ---- PNG reading --------------------------------------------------------------------------------------------------
// The classic libpng API reports errors by longjmp. Everything that must survive the jump lives in PngReadState
// (not in locals of the function that calls setjmp, so nothing can be clobbered), and the callbacks libpng runs
// hold no objects with destructors, so the jump skips nothing that needs unwinding.

struct PngReadState {
  const std::string* bytes = nullptr;
  size_t pos = 0;
  char error[256] = {};
  bool too_large = false, unwanted_size = false;
  ImageSize want;
  png_uint_32 width = 0, height = 0;
  int channels = 0;  // after the transformations: 1 to 4 (G, GA, RGB, RGBA), 8 bits each
  std::vector<unsigned char> buffer;
  std::vector<png_bytep> rows;
};

void png_error_to_state(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngReadState*>(png_get_error_ptr(png));
  std::snprintf(state->error, sizeof state->error, "%s", message ? message : "unknown libpng error");
  png_longjmp(png, 1);
}

void png_ignore_warning(png_structp, png_const_charp) {}

void png_read_from_state(png_structp png, png_bytep out, size_t length) {
  auto* state = static_cast<PngReadState*>(png_get_io_ptr(png));
  if (length > state->bytes->size() - state->pos) png_error(png, "file ends in the middle of the image");
  std::memcpy(out, state->bytes->data() + state->pos, length);
  state->pos += length;
}

// Returns false when libpng reported an error (message in state.error) or the image is too large (state.too_large).
bool decode_png_rows(png_structp png, png_infop info, PngReadState& state) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  state.width = png_get_image_width(png, info);
  state.height = png_get_image_height(png, info);
  if (state.width > static_cast<png_uint_32>(kMaxImageSide) ||
      state.height > static_cast<png_uint_32>(kMaxImageSide) ||
      int64_t{state.width} * state.height > kMaxImagePixels) {
    state.too_large = true;
    return false;
  }
  if (!state.want.any() && (state.width != static_cast<png_uint_32>(state.want.width) ||
                            state.height != static_cast<png_uint_32>(state.want.height))) {
    state.unwanted_size = true;
    return false;
  }
  const int color_type = png_get_color_type(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  png_set_scale_16(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  state.channels = png_get_channels(png, info);
  if (png_get_bit_depth(png, info) != 8 || state.channels < 1 || state.channels > 4 ||
      png_get_rowbytes(png, info) != size_t{state.width} * state.channels)
    png_error(png, "unexpected pixel layout after conversion to 8 bits");
  const size_t row_bytes = size_t{state.width} * state.channels;
  state.buffer.resize(row_bytes * state.height);
  state.rows.resize(state.height);
  for (png_uint_32 y = 0; y < state.height; ++y) state.rows[y] = state.buffer.data() + y * row_bytes;
  png_read_image(png, state.rows.data());
  png_read_end(png, nullptr);
  return true;
}

// ---- PGM parsing --------------------------------------------------------------------------------------------------

class PgmScanner {
 public:
  PgmScanner(const std::string& bytes, const std::string& what) : bytes_(bytes), what_(what) {}

  // Skips whitespace and '#' comments (which run to the end of the line).
  void skip_space_and_comments() {
    while (pos_ < bytes_.size()) {
      const char c = bytes_[pos_];
      if (is_space(c)) {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < bytes_.size() && bytes_[pos_] != '\n' && bytes_[pos_] != '\r') ++pos_;
      } else {
        break;
      }
    }
  }

  bool at_end() const { return pos_ >= bytes_.size(); }

  // A decimal number of at most 9 digits, followed by whitespace, a comment or the end of the file.
  int64_t number(const char* name) {
    skip_space_and_comments();
    if (at_end()) fail(std::string("file ends before the ") + name);
    const size_t start = pos_;
    int64_t value = 0;
    while (pos_ < bytes_.size() && bytes_[pos_] >= '0' && bytes_[pos_] <= '9') {
      if (pos_ - start == 9) fail(std::string(name) + " at byte " + std::to_string(start) + " is too large");
      value = value * 10 + (bytes_[pos_] - '0');
      ++pos_;
    }
    if (pos_ == start || (!at_end() && !is_space(bytes_[pos_]) && bytes_[pos_] != '#'))
      fail("expected the " + std::string(name) + " (a decimal number) at byte " + std::to_string(start));
    return value;
  }

  [[noreturn]] void fail(const std::string& why) const { throw InputError(what_ + ": bad PGM file: " + why); }

  size_t pos() const { return pos_; }
  void advance(size_t n) { pos_ += n; }

  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

 private:
  const std::string& bytes_;
  const std::string& what_;
  size_t pos_ = 0;
};

// ---- NPY ----------------------------------------------------------------------------------------------------------

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

size_t checked_element_count(const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) throw InternalError("npy shape " + shape_string(shape) + " has a negative dimension");
    if (d != 0 && count > (size_t{1} << 60) / static_cast<size_t>(d))
      throw InternalError("npy shape " + shape_string(shape) + " is too large");
    count *= static_cast<size_t>(d);
  }
  return count;
}

}  // namespace

// ---- PNG ----------------------------------------------------------------------------------------------------------

GrayImage parse_png(const std::string& bytes, const std::string& what, ImageSize want) {
  if (!has_png_signature(bytes)) throw InputError(what + ": not a PNG file");
  PngReadState state;
  state.bytes = &bytes;
  state.want = want;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, png_error_to_state, png_ignore_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    throw InternalError(what + ": libpng could not allocate its decoder");
  }
  png_set_read_fn(png, &state, png_read_from_state);
  bool ok = false;
  try {
    ok = decode_png_rows(png, info, state);
  } catch (...) {  // std::bad_alloc from our own buffers; libpng itself never throws
    png_destroy_read_struct(&png, &info, nullptr);
    throw;
  }
  png_destroy_read_struct(&png, &info, nullptr);
  if (state.too_large) check_image_size(state.width, state.height, what);
  if (state.unwanted_size) check_wanted_size(state.width, state.height, want, what);
  if (!ok) throw InputError(what + ": corrupt PNG: " + state.error);

  GrayImage image;
  image.width = static_cast<int>(state.width);
  image.height = static_cast<int>(state.height);
  const size_t n = size_t{state.width} * state.height;
  image.pixels.resize(n);
  const int c = state.channels;
  const bool color = c >= 3, alpha = c == 2 || c == 4;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char* p = &state.buffer[i * c];
    // PIL's convert("L") formula, so that images prepared in Python read the same here.
    const unsigned gray = color ? (p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16 : p[0];
    const float value = gray / 255.0f;
    // Composited onto black: gray * alpha, both in [0,1].
    image.pixels[i] = alpha ? value * (p[c - 1] / 255.0f) : value;
  }
  return image;
}

GrayImage read_png(const std::string& path, ImageSize want) {
  return parse_png(read_file(path, kMaxImageFileBytes), path, want);
}

namespace {

void write_png(const std::string& path, int width, int height, const std::vector<uint8_t>& pixels, int channels) {
  if (width <= 0 || height <= 0)
    throw InternalError("cannot write " + path + ": image is " + std::to_string(width) + "x" + std::to_string(height));
  const size_t expected = size_t(width) * size_t(height) * size_t(channels);
  if (pixels.size() != expected)
    throw InternalError("cannot write " + path + ": " + std::to_string(width) + "x" + std::to_string(height) + "x" +
                        std::to_string(channels) + " image needs " + std::to_string(expected) + " bytes, got " +
                        std::to_string(pixels.size()));
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  AtomicFile file(path);
  // The simplified API wraps libpng's setjmp handling and reports failure in image.message.
  if (!png_image_write_to_stdio(&image, file.handle(), 0, pixels.data(), width * channels, nullptr))
    throw InternalError("cannot write " + path + ": libpng: " + image.message);
  file.commit();
}

}  // namespace

void write_png_gray(const std::string& path, int width, int height, const std::vector<uint8_t>& gray) {
  write_png(path, width, height, gray, 1);
}

void write_png_rgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb) {
  write_png(path, width, height, rgb, 3);
}

// ---- PGM ----------------------------------------------------------------------------------------------------------

GrayImage parse_pgm(const std::string& bytes, const std::string& what, ImageSize want) {
  if (!has_pgm_magic(bytes)) throw InputError(what + ": not a PGM file (expected the magic 'P5' or 'P2')");
  const bool binary = bytes[1] == '5';
  PgmScanner scan(bytes, what);
  scan.advance(2);
  if (!scan.at_end() && !PgmScanner::is_space(bytes[scan.pos()]) && bytes[scan.pos()] != '#')
    scan.fail("expected whitespace after the magic");
  const int64_t width = scan.number("width");
  const int64_t height = scan.number("height");
  const int64_t maxval = scan.number("maxval");
  if (width <= 0 || height <= 0)
    scan.fail("image is " + std::to_string(width) + "x" + std::to_string(height) + "; both must be at least 1");
  if (maxval < 1 || maxval > 65535) scan.fail("maxval is " + std::to_string(maxval) + "; it must be 1..65535");
  check_image_size(width, height, what);
  check_wanted_size(width, height, want, what);

  GrayImage image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  const size_t n = static_cast<size_t>(width * height);
  const auto max_f = static_cast<float>(maxval);
  auto check_sample = [&](int64_t v, size_t i) {
    if (v > maxval)
      scan.fail("pixel " + std::to_string(i) + " is " + std::to_string(v) + ", above maxval " + std::to_string(maxval));
  };

  if (binary) {
    // Exactly one whitespace byte separates maxval from the raster (a '#' here would be pixel data).
    if (scan.at_end()) scan.fail("file ends before the pixel data");
    scan.advance(1);
    const size_t bytes_per_sample = maxval > 255 ? 2 : 1;
    const size_t need = n * bytes_per_sample;
    const size_t have = bytes.size() - scan.pos();
    if (have < need)
      scan.fail("pixel data truncated: " + std::to_string(width) + "x" + std::to_string(height) + " needs " +
                std::to_string(need) + " bytes, the file has " + std::to_string(have));
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + scan.pos());
    image.pixels.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t v = bytes_per_sample == 2 ? (int64_t{p[2 * i]} << 8) | p[2 * i + 1] : int64_t{p[i]};
      check_sample(v, i);
      image.pixels[i] = static_cast<float>(v) / max_f;
    }
  } else {
    // Each ASCII sample is a digit and a separator (the last needs none): a short file is refused before the
    // n floats are allocated.
    if (bytes.size() - scan.pos() < 2 * n - 1)
      scan.fail("pixel data truncated: " + std::to_string(width) + "x" + std::to_string(height) + " needs " +
                std::to_string(n) + " values, the file has " + std::to_string(bytes.size() - scan.pos()) + " bytes left");
    image.pixels.resize(n);
    for (size_t i = 0; i < n; ++i) {
      scan.skip_space_and_comments();
      if (scan.at_end())
        scan.fail("pixel data truncated: found " + std::to_string(i) + " of " + std::to_string(n) + " values");
      const int64_t v = scan.number("pixel value");
      check_sample(v, i);
      image.pixels[i] = static_cast<float>(v) / max_f;
    }
  }
  return image;
}

GrayImage read_pgm(const std::string& path, ImageSize want) {
  return parse_pgm(read_file(path, kMaxImageFileBytes), path, want);
}

GrayImage parse_image(const std::string& bytes, const std::string& what, ImageSize want) {
  if (has_png_signature(bytes)) return parse_png(bytes, what, want);
  if (has_pgm_magic(bytes)) return parse_pgm(bytes, what, want);
  throw InputError(what + ": not a PNG or PGM image (expected a PNG, a binary P5 PGM or an ASCII P2 PGM)");
}

GrayImage read_image(const std::string& path, ImageSize want) {
  return parse_image(read_file(path, kMaxImageFileBytes), path, want);
}

// ---- NPY ----------------------------------------------------------------------------------------------------------

std::string npy_header_f32(const std::vector<int64_t>& shape) {
  checked_element_count(shape);
  std::string dims = "(";
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";  // a 1-tuple in Python is "(n,)"
  dims += ")";
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + dims + ", }";
  // 10 bytes of magic, version and length, then the dict, spaces and '\n' up to a multiple of 64.
  const size_t unpadded = 10 + dict.size() + 1;
  const size_t total = (unpadded + 63) / 64 * 64;
  if (total - 10 > 65535) throw InternalError("npy shape " + shape_string(shape) + " has too many dimensions");
  dict.append(total - unpadded, ' ');
  dict += '\n';
  const size_t header_len = dict.size();
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header_len & 0xff);
  out += static_cast<char>(header_len >> 8);
  return out + dict;
}

NpyStreamWriter::NpyStreamWriter(const std::string& path, std::vector<int64_t> shape)
    : shape_(std::move(shape)), expected_(checked_element_count(shape_)), file_(path) {
  file_.write(npy_header_f32(shape_));
}

void NpyStreamWriter::append(const float* data, size_t count) {
  if (count > expected_ - written_)
    throw InternalError(file_.path() + ": appending " + std::to_string(count) + " floats after " +
                        std::to_string(written_) + " would pass the " + std::to_string(expected_) +
                        " of shape " + shape_string(shape_));
  file_.write(data, count * sizeof(float));
  written_ += count;
}

void NpyStreamWriter::commit() {
  if (written_ != expected_)
    throw InternalError(file_.path() + ": wrote " + std::to_string(written_) + " floats but shape " +
                        shape_string(shape_) + " needs " + std::to_string(expected_) + "; file not created");
  file_.commit();
}

void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  NpyStreamWriter writer(path, shape);
  writer.append(data, writer.expected());
  writer.commit();
}

}  // namespace nudge
