#include "dataset.h"

#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "atomic_file.h"
#include "errors.h"

namespace nudge {

namespace {

// Large enough for any real IDX file (MNIST's training images are 47M), small enough that every dimension and the
// element count fit in an int and a hostile header cannot make us reserve absurd amounts of memory.
constexpr uint64_t kMaxElements = (uint64_t{1} << 31) - 1;
constexpr int kMaxDims = 4;
constexpr int kNumClasses = 10;

std::string hex_byte(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", b);
  return buf;
}

// The type codes the IDX format defines; anything else means the file is not IDX at all.
bool is_idx_type(uint8_t t) { return t == 0x08 || t == 0x09 || t == 0x0B || t == 0x0C || t == 0x0D || t == 0x0E; }

uint32_t read_be32(const std::string& s, size_t at) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[at + i])); };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

// read_idx, but a missing file gets a hint on where the data comes from instead of a bare "cannot read".
IdxArray read_dataset_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw InputError(path + ": file not found; run data/fetch_mnist.sh (--fashion for Fashion-MNIST) to download it");
  // read_file would read a folder as an empty file, which would then be reported as a truncated IDX file.
  if (!std::filesystem::is_regular_file(path, ec)) throw InputError(path + ": not a regular file");
  return read_idx(path);
}

// Checks the magic number and the dimensions in `bytes` (which need only hold the header) against a file of `size`
// bytes, fills a.dims and returns the header length. read_idx runs it on the first bytes, before the whole file is read.
uint64_t check_idx_header(const std::string& bytes, uint64_t size, const std::string& what, IdxArray& a) {
  auto fail = [&](const std::string& why) -> InputError { return InputError(what + ": " + why); };
  if (size < 4)
    throw fail("file is " + std::to_string(size) + " bytes, too short for the 4-byte IDX magic number");
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
  if (byte(0) != 0 || byte(1) != 0)
    throw fail("not an IDX file: magic number starts " + hex_byte(byte(0)) + " " + hex_byte(byte(1)) +
               ", expected two zero bytes");
  const uint8_t type = byte(2);
  if (type != 0x08) {
    if (is_idx_type(type))
      throw fail("unsupported IDX type " + hex_byte(type) + ", nudge reads unsigned bytes (0x08)");
    throw fail("unknown IDX type " + hex_byte(type) + " in the magic number; not an IDX file");
  }
  const int ndims = byte(3);
  if (ndims < 1 || ndims > kMaxDims)
    throw fail("IDX header says " + std::to_string(ndims) + " dimensions; nudge reads 1 to " +
               std::to_string(kMaxDims));
  const uint64_t header = 4 + 4 * static_cast<uint64_t>(ndims);
  if (size < header)
    throw fail("file is " + std::to_string(size) + " bytes, too short for the " + std::to_string(header) +
               "-byte header of a " + std::to_string(ndims) + "-dimensional IDX file");

  a.dims.clear();
  uint64_t count = 1;
  for (int i = 0; i < ndims; ++i) {
    const uint64_t d = read_be32(bytes, 4 + 4 * static_cast<size_t>(i));
    if (d == 0) throw fail("dimension " + std::to_string(i) + " is 0");
    // Divide rather than multiply so the check itself cannot overflow.
    if (d > kMaxElements / count)
      throw fail("dimensions make more than " + std::to_string(kMaxElements) + " elements; not a dataset nudge reads");
    count *= d;
    a.dims.push_back(static_cast<int>(d));
  }
  const uint64_t expected = header + count;
  if (size < expected)
    throw fail("file is " + std::to_string(size) + " bytes, the header promises " + std::to_string(expected) +
               " (truncated?)");
  if (size > expected)
    throw fail("file is " + std::to_string(size) + " bytes, the header promises " + std::to_string(expected) +
               " (" + std::to_string(size - expected) + " trailing bytes)");
  return header;
}

}  // namespace

IdxArray parse_idx(const std::string& bytes, const std::string& what) {
  IdxArray a;
  const uint64_t header = check_idx_header(bytes, bytes.size(), what, a);
  a.bytes.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

IdxArray read_idx(const std::string& path) {
  // The header is checked against the file's size first, so a large file that is not the IDX it claims is never read.
  IdxArray header_only;
  check_idx_header(read_file_prefix(path, 4 + 4 * kMaxDims), file_size(path), path, header_only);
  return parse_idx(read_file(path), path);
}


void Dataset::image_as_float(int n, float* out) const {
  if (n < 0 || n >= count)
    throw InputError("image " + std::to_string(n) + " is out of range: the dataset has " + std::to_string(count) +
                     " images (0 to " + std::to_string(count - 1) + ")");
  const size_t pixels_per_image = static_cast<size_t>(rows) * cols;
  const uint8_t* src = pixels.data() + static_cast<size_t>(n) * pixels_per_image;
  for (size_t i = 0; i < pixels_per_image; ++i) out[i] = src[i] / 255.0f;
}

Dataset load_dataset(const std::string& dir, const std::string& split) {
  std::string prefix;
  if (split == "train")
    prefix = "train";
  else if (split == "test")
    prefix = "t10k";
  else
    throw InputError("unknown dataset split '" + split + "': expected 'train' or 'test'");
  const std::string images_path = dir + "/" + prefix + "-images-idx3-ubyte";
  const std::string labels_path = dir + "/" + prefix + "-labels-idx1-ubyte";

  IdxArray images = read_dataset_file(images_path);
  if (images.dims.size() != 3)
    throw InputError(images_path + ": images have " + std::to_string(images.dims.size()) +
                     " dimensions, expected 3 (count, rows, cols)");
  IdxArray labels = read_dataset_file(labels_path);
  if (labels.dims.size() != 1)
    throw InputError(labels_path + ": labels have " + std::to_string(labels.dims.size()) +
                     " dimensions, expected 1 (count)");
  if (labels.dims[0] != images.dims[0])
    throw InputError(labels_path + ": " + std::to_string(labels.dims[0]) + " labels for " +
                     std::to_string(images.dims[0]) + " images in " + images_path);
  for (size_t i = 0; i < labels.bytes.size(); ++i)
    if (labels.bytes[i] >= kNumClasses)
      throw InputError(labels_path + ": label " + std::to_string(labels.bytes[i]) + " at index " + std::to_string(i) +
                       " is not a class 0-9");

  Dataset d;
  d.count = images.dims[0];
  d.rows = images.dims[1];
  d.cols = images.dims[2];
  d.pixels = std::move(images.bytes);
  d.labels = std::move(labels.bytes);
  return d;
}

}  // namespace nudge
