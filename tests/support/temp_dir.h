// A private folder under the GoogleTest temp dir (::testing::TempDir()), made with mkdtemp and removed, with all it
// holds, when the object goes out of scope.
#pragma once
#include <cstddef>
#include <filesystem>
#include <string>

namespace nudge::testing_support {

class TempDir {
 public:
  // The folder is named `prefix` followed by six random characters.
  explicit TempDir(const std::string& prefix = "nudge_");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The full path of `name` inside the folder (the file need not exist).
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // How many entries the folder holds (not recursive).
  size_t entries() const;

 private:
  std::filesystem::path path_;
};

}  // namespace nudge::testing_support
