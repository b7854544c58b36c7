// Byte-level pieces the journals share (row_journal.cpp, robustness_journal.cpp): little-endian fields appended to a
// buffer, a cursor that reads them back and refuses to run past the end, and writes flushed to disk.
#pragma once
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "errors.h"

namespace nudge::journal_bytes {

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

// Reads fixed-size fields from a byte range; InputError naming the file when a field runs past the end.
class Cursor {
 public:
  Cursor(const char* p, size_t n, const std::string& what) : p_(p), end_(p + n), what_(what) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  const char* take(size_t n) {
    need(n);
    const char* at = p_;
    p_ += n;
    return at;
  }
  size_t left() const { return static_cast<size_t>(end_ - p_); }

 private:
  void need(size_t n) const {
    if (static_cast<size_t>(end_ - p_) < n) throw InputError(what_ + ": a record runs past the end of its block");
  }
  const char* p_;
  const char* end_;
  std::string what_;
};

inline void flush_to_disk(std::FILE* f, const std::string& path) {
  if (std::fflush(f) != 0 || ::fdatasync(::fileno(f)) != 0)
    throw IoError("I/O error: write to " + path + " failed: " + std::strerror(errno));
}

inline void write_all(std::FILE* f, const void* data, size_t n, const std::string& path) {
  if (n && std::fwrite(data, 1, n, f) != n) throw IoError("I/O error: write to " + path + " failed: " + std::strerror(errno));
}

// The file's head: 8 magic bytes, u32 version, u32 header length, the header's JSON text.
std::string encode_head(const char magic[8], uint32_t version, const std::string& header_json);
// Reads and checks the head of `f` (`size` bytes in all, read from its start); InputError naming `path` and what is
// wrong. Returns the header's JSON text; *head_bytes is the head's length.
std::string read_head(std::FILE* f, uint64_t size, const std::string& path, const char magic[8], uint32_t version,
                      const char* kind, uint64_t* head_bytes);

// A block: 4 magic bytes, u32 count, u64 tag (image steps, a first point), u64 payload length, payload, u64 FNV-1a.
constexpr size_t kBlockHeadBytes = 4 + 4 + 8 + 8;
std::string frame_block(const char magic[4], uint32_t count, uint64_t tag, const std::string& payload);
struct RawBlock {
  uint32_t count = 0;
  uint64_t tag = 0;
  std::string payload;
};
// The next block of `f` when `left` bytes remain from its position: false when it is cut short, has another magic,
// a length past the end or over `max_payload`, or fails its checksum (the file's damaged tail).
bool read_block(std::FILE* f, uint64_t left, const char magic[4], uint64_t max_payload, RawBlock& out);
// The count of a framed block; InternalError when `block` does not start with `magic`.
uint32_t framed_count(const std::string& block, const char magic[4]);

}  // namespace nudge::journal_bytes
