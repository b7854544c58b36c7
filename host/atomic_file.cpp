#include "atomic_file.h"

#include <sys/stat.h>
#include <unistd.h>

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
  std::setvbuf(file_, nullptr, _IOFBF, size_t{1} << 20);
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) std::remove(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (bytes && std::fwrite(data, 1, bytes, file_) != bytes)
    throw InternalError("write to " + path_ + " failed: " + std::strerror(errno));
}

void AtomicFile::commit() {
  if (std::fflush(file_) != 0 || std::fclose(file_) != 0) {
    file_ = nullptr;
    throw InternalError("write to " + path_ + " failed: " + std::strerror(errno));
  }
  file_ = nullptr;
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0)
    throw InternalError("cannot rename " + temp_path_ + " to " + path_ + ": " + std::strerror(errno));
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

std::string read_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) throw InputError("cannot read " + path + ": it is a folder");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  // Sized once from the file's length: a 47 MB training set read through a growing stream costs more than training
  // a few thousand images.
  const std::streamoff size = in.tellg();
  if (size < 0) throw InputError("cannot read " + path);
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(bytes.data(), size)) throw InputError("cannot read " + path + ": short read");
  return bytes;
}

}  // namespace nudge
