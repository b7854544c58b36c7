// Image and array files: reading PNG/PGM inputs into [0,1] grayscale, writing PNG pictures and NumPy .npy arrays.
// Readers treat every byte as hostile (dimensions are checked and capped before anything is allocated) and throw
// InputError naming the file; writers go through AtomicFile, so an interrupted job never leaves a partial file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "atomic_file.h"

namespace nudge {

struct GrayImage {
  int width = 0, height = 0;
  std::vector<float> pixels;  // row-major, height * width values in [0,1]
};

// Readers refuse anything larger before allocating: 16384 per side and 2^26 pixels (256 MiB as floats), far above
// the 28x28 images nudge works on but small enough that a hostile header cannot exhaust memory.
constexpr int kMaxImageSide = 16384;
constexpr int64_t kMaxImagePixels = int64_t{1} << 26;
// Image files larger than this are refused before they are read (a 16384^2 16-bit RGBA PNG stored raw is 2 GiB, but
// nothing nudge reads comes near 64 MiB).
constexpr uint64_t kMaxImageFileBytes = uint64_t{64} << 20;

// The size a caller needs; 0x0 takes any. Given one, a reader refuses another size as soon as the header has been read,
// before decoding anything ("PATH is 8192x8192; the model takes 28x28").
struct ImageSize {
  int width = 0, height = 0;
  bool any() const { return width == 0 && height == 0; }
};

// PNG of any colour type and bit depth, reduced to 8-bit gray and divided by 255:
//   - 16-bit samples are scaled to 8 bits (rounded), palettes and 1/2/4-bit gray are expanded;
//   - RGB becomes luma (0.299 R + 0.587 G + 0.114 B on the stored values, rounded to 8 bits exactly as PIL's
//     convert("L") does, so R=G=B is exact and gAMA/sRGB chunks are ignored);
//   - alpha (including tRNS transparency) is composited onto black: gray * alpha / 255.
// Throws InputError "PATH: not a PNG file" on a wrong signature, "PATH: corrupt PNG: <libpng message>" otherwise.
GrayImage read_png(const std::string& path, ImageSize want = {});
GrayImage parse_png(const std::string& bytes, const std::string& what, ImageSize want = {});

// PGM: binary P5 or ASCII P2, '#' comments between header tokens, maxval 1..65535 (P5 samples are 16-bit big-endian
// when maxval > 255). Values are divided by maxval; a sample above maxval is an error. Data after the image is ignored.
GrayImage read_pgm(const std::string& path, ImageSize want = {});
GrayImage parse_pgm(const std::string& bytes, const std::string& what, ImageSize want = {});

// Dispatches on the magic bytes (PNG signature, "P5", "P2"); anything else: InputError "PATH: not a PNG or PGM image".
GrayImage read_image(const std::string& path, ImageSize want = {});
GrayImage parse_image(const std::string& bytes, const std::string& what, ImageSize want = {});

// 8-bit PNG writers (atomic). `gray` holds height*width bytes, `rgb` height*width*3 bytes (R,G,B per pixel), row-major.
void write_png_gray(const std::string& path, int width, int height, const std::vector<uint8_t>& gray);
void write_png_rgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb);

// NumPy .npy version 1.0, dtype '<f4', C order: "\x93NUMPY", 1, 0, a little-endian uint16 header length, then a
// Python dict literal padded with spaces and ended by '\n' so that the data starts at a multiple of 64 bytes.
void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

// The same format for outputs too large to hold at once: the header goes out first, then append() adds data in row-
// major order. commit() checks that exactly prod(shape) floats arrived (InternalError otherwise, and the final path is
// never created); append() refuses to go past that count. Without commit() nothing appears at `path`.
class NpyStreamWriter {
 public:
  NpyStreamWriter(const std::string& path, std::vector<int64_t> shape);
  void append(const float* data, size_t count);
  void commit();
  size_t expected() const { return expected_; }
  size_t written() const { return written_; }

 private:
  std::vector<int64_t> shape_;
  size_t expected_ = 0, written_ = 0;
  AtomicFile file_;
};

// The .npy header (magic through the '\n'), exposed for tests.
std::string npy_header_f32(const std::vector<int64_t>& shape);

}  // namespace nudge
