// Writing files so that an interrupted job never leaves a half-written file that looks complete:
// everything goes to "<path>.tmp.<pid>" and is renamed over <path> only once it is whole.
#pragma once
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
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
  // Throws IoError naming the path and the system's reason (e.g. "No space left on device").
  void write(const void* data, size_t bytes);
  void write(const std::string& text) { write(text.data(), text.size()); }
  // Flushes, closes and renames onto the final path; throws IoError on failure.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, temp_path_;
  std::FILE* file_ = nullptr;
  // stdio's own buffer is one block (4 KiB); glibc ignores the size passed to setvbuf without a buffer, so it is ours.
  std::unique_ptr<char[]> buffer_;
  bool committed_ = false;
};

// The size of stdio buffer AtomicFile gives each file.
constexpr size_t kAtomicFileBuffer = size_t{1} << 20;

// Whole-file convenience wrapper around AtomicFile.
void write_file_atomically(const std::string& path, const std::string& contents);

// Reads a whole regular file; throws InputError naming the path when it cannot be read, is not a regular file (a
// folder, a FIFO that would block, a device) or is larger than max_bytes (checked before anything is read).
std::string read_file(const std::string& path, uint64_t max_bytes = std::numeric_limits<uint64_t>::max());
// The first min(n, size) bytes of a regular file, for header checks before a whole-file read.
std::string read_file_prefix(const std::string& path, size_t n);
// The size of a regular file; InputError as read_file.
uint64_t file_size(const std::string& path);

}  // namespace nudge
