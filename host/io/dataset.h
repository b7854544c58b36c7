// MNIST-format datasets from IDX files. The IDX reader checks the magic number, the dimensions and the file length
// before trusting anything, and says what is wrong.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nudge {

struct IdxArray {
  std::vector<int> dims;       // e.g. {10000, 28, 28}
  std::vector<uint8_t> bytes;  // unsigned-byte data only (type code 0x08)
};

// Parses an in-memory IDX file; `what` names it in messages. Throws InputError.
IdxArray parse_idx(const std::string& bytes, const std::string& what);
IdxArray read_idx(const std::string& path);

struct Dataset {
  int count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // [count, rows, cols], 0..255
  std::vector<uint8_t> labels;  // [count]

  // Writes the rows*cols pixels of image n to out as floats in [0,1] (divided by 255). Throws InputError when n is
  // out of range.
  void image_as_float(int n, float* out) const;
};

// Loads "<dir>/train-images-idx3-ubyte" + labels (split "train") or "<dir>/t10k-..." (split "test").
// Checks that the image and label counts agree and that every label is below 10.
Dataset load_dataset(const std::string& dir, const std::string& split);

}  // namespace nudge
