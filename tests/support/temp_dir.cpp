#include "temp_dir.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <iterator>
#include <stdexcept>
#include <system_error>

namespace nudge::testing_support {

namespace fs = std::filesystem;

TempDir::TempDir(const std::string& prefix) {
  std::string pattern = ::testing::TempDir() + prefix + "XXXXXX";
  if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

size_t TempDir::entries() const {
  return std::distance(fs::directory_iterator(path_), fs::directory_iterator());
}

}  // namespace nudge::testing_support
