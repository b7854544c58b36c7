#include "journal_bytes.h"

#include "fnv1a.h"

namespace nudge::journal_bytes {

namespace {
constexpr uint32_t kMaxHeaderBytes = 1u << 20;
}

std::string encode_head(const char magic[8], uint32_t version, const std::string& header_json) {
  std::string head(magic, 8);
  put<uint32_t>(head, version);
  put<uint32_t>(head, static_cast<uint32_t>(header_json.size()));
  return head + header_json;
}

std::string read_head(std::FILE* f, uint64_t size, const std::string& path, const char magic[8], uint32_t version,
                      const char* kind, uint64_t* head_bytes) {
  char head[16];
  if (size < sizeof head || std::fread(head, 1, sizeof head, f) != sizeof head || std::memcmp(head, magic, 8) != 0)
    throw InputError(path + " is not " + kind + " (no " + std::string(magic, 8) + " magic)");
  uint32_t v, bytes;
  std::memcpy(&v, head + 8, 4);
  std::memcpy(&bytes, head + 12, 4);
  if (v != version)
    throw InputError(path + " is " + kind + " of version " + std::to_string(v) + "; this nudge reads version " +
                     std::to_string(version));
  if (bytes > kMaxHeaderBytes || bytes > size - sizeof head)
    throw InputError(path + " is not " + kind + " (its header length " + std::to_string(bytes) + " is past the end)");
  std::string text(bytes, '\0');
  if (std::fread(text.data(), 1, bytes, f) != bytes) throw InputError("cannot read " + path + ": short read");
  *head_bytes = sizeof head + bytes;
  return text;
}

std::string frame_block(const char magic[4], uint32_t count, uint64_t tag, const std::string& payload) {
  std::string block(magic, 4);
  put<uint32_t>(block, count);
  put<uint64_t>(block, tag);
  put<uint64_t>(block, static_cast<uint64_t>(payload.size()));
  block += payload;
  put<uint64_t>(block, fnv1a64(payload.data(), payload.size()));
  return block;
}

bool read_block(std::FILE* f, uint64_t left, const char magic[4], uint64_t max_payload, RawBlock& out) {
  char bh[kBlockHeadBytes];
  if (left < kBlockHeadBytes + 8 || std::fread(bh, 1, sizeof bh, f) != sizeof bh || std::memcmp(bh, magic, 4) != 0)
    return false;
  uint64_t bytes = 0;
  std::memcpy(&out.count, bh + 4, 4);
  std::memcpy(&out.tag, bh + 8, 8);
  std::memcpy(&bytes, bh + 16, 8);
  if (bytes > max_payload || bytes > left - kBlockHeadBytes - 8) return false;
  out.payload.assign(static_cast<size_t>(bytes), '\0');
  uint64_t sum = 0;
  return std::fread(out.payload.data(), 1, out.payload.size(), f) == out.payload.size() && std::fread(&sum, 1, 8, f) == 8 &&
         sum == fnv1a64(out.payload.data(), out.payload.size());
}

uint32_t framed_count(const std::string& block, const char magic[4]) {
  if (block.size() < kBlockHeadBytes + 8 || std::memcmp(block.data(), magic, 4) != 0)
    throw InternalError("journal: a block to append does not start with its head");
  uint32_t n;
  std::memcpy(&n, block.data() + 4, 4);
  return n;
}

}  // namespace nudge::journal_bytes
