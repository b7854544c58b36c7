#include "atomic_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "errors.h"

namespace nudge {

AtomicFile::AtomicFile(const std::string& path)
    : path_(path), temp_path_(path + ".tmp." + std::to_string(::getpid())) {
  file_ = std::fopen(temp_path_.c_str(), "wb");
  if (!file_) throw InputError("cannot write " + path + ": " + std::strerror(errno));
  // Streamed outputs (images.npy: 3 KiB a row) would otherwise cost a write() per row with stdio's 4 KiB buffer.
  buffer_.reset(new char[kAtomicFileBuffer]);
  std::setvbuf(file_, buffer_.get(), _IOFBF, kAtomicFileBuffer);
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) std::remove(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (bytes && std::fwrite(data, 1, bytes, file_) != bytes)
    throw IoError("I/O error: write to " + path_ + " failed: " + std::strerror(errno));
}

void AtomicFile::commit() {
  const bool flushed = std::fflush(file_) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed)
    throw IoError("I/O error: write to " + path_ + " failed: " + std::strerror(flushed ? errno : flush_errno));
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0)
    throw IoError("I/O error: cannot rename " + temp_path_ + " to " + path_ + ": " + std::strerror(errno));
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

namespace {

// stat() for the readers: only a regular file is read (a FIFO would block the open, a folder reads as empty).
struct stat regular_file_stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw InputError("cannot read " + path + ": it is a folder");
  if (!S_ISREG(st.st_mode)) throw InputError("cannot read " + path + ": not a regular file");
  return st;
}

std::string read_bytes(const std::string& path, uint64_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  std::string bytes(static_cast<size_t>(n), '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(n))) throw InputError("cannot read " + path + ": short read");
  return bytes;
}

}  // namespace

uint64_t file_size(const std::string& path) { return static_cast<uint64_t>(regular_file_stat(path).st_size); }

std::string read_file_prefix(const std::string& path, size_t n) {
  return read_bytes(path, std::min<uint64_t>(n, file_size(path)));
}

std::string read_file(const std::string& path, uint64_t max_bytes) {
  // Sized once from the file's length: a 47 MB training set read through a growing stream costs more than training
  // a few thousand images.
  const uint64_t size = file_size(path);
  if (size > max_bytes)
    throw InputError("cannot read " + path + ": it is " + std::to_string(size) + " bytes, more than the " +
                     std::to_string(max_bytes) + " nudge accepts for such a file");
  return read_bytes(path, size);
}

}  // namespace nudge
