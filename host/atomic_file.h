// Writing files so that an interrupted job never leaves a half-written file that looks complete:
// everything goes to "<path>.tmp.<pid>" and is renamed over <path> only once it is whole.
#pragma once
#include <cstdio>
#include <string>

namespace nudge {

class AtomicFile {
 public:
  // Opens the temporary file; throws InputError when the folder is not writable.
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();  // removes the temporary file unless commit() ran
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  std::FILE* handle() { return file_; }
  void write(const void* data, size_t bytes);
  void write(const std::string& text) { write(text.data(), text.size()); }
  // Flushes, closes and renames onto the final path; throws InternalError on failure.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, temp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

// Whole-file convenience wrapper around AtomicFile.
void write_file_atomically(const std::string& path, const std::string& contents);

// Reads a whole file; throws InputError naming the path when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace nudge
