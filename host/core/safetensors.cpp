// safetensors reader and writer. The reader validates the header completely before it copies a single float: every
// length and offset comes from the file, so each is range-checked (with overflow in mind) before it is used.
// Checks follow the reference implementation (huggingface/safetensors, tensor.rs): header at most 100 MB, tensors
// sorted by data_offsets must tile the data section exactly, byte size = element count * dtype size.
#include "safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "atomic_file.h"
#include "errors.h"

// Tensor bytes are copied straight into floats, which is only right on a little-endian host with IEEE binary32.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp copies little-endian float32 bytes with memcpy; this host is not little-endian"
#endif
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "safetensors F32 is IEEE binary32");

namespace nudge {

namespace {

using Json = nlohmann::json;

// The reference implementation refuses larger headers; a real one for nudge's models is a few hundred bytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A valid header nests three deep (object > tensor entry > shape array). The cap keeps a hostile "[[[[..." from
// building millions of nested JSON values.
constexpr int kMaxJsonDepth = 16;
// Names and JSON snippets from the file are cut to this length in messages.
constexpr size_t kMaxQuotedChars = 80;
constexpr size_t kF32Bytes = 4;

// Every dtype the safetensors specification defines, so that "unknown" and "not F32" can be told apart.
const char* const kKnownDtypes[] = {"BOOL", "F4",   "F6_E2M3", "F6_E3M2", "U8",  "I8",  "F8_E5M2",
                                    "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32",
                                    "U32",  "F32",  "F64",     "I64",     "U64", "C64"};

// Text from the file, made safe for a one-line message: control bytes (and with ascii_only, all bytes >= 0x80)
// become \xNN, and long text is cut. Without ascii_only the text must be valid UTF-8 (the JSON parser has checked
// every string it returns), and the cut falls on a character boundary.
std::string printable(const std::string& s, size_t max_chars = kMaxQuotedChars, bool ascii_only = false) {
  std::string out;
  size_t i = 0;
  for (; i < s.size() && out.size() < max_chars; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || (ascii_only && c >= 0x80)) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (i < s.size()) {
    if (!ascii_only && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) {  // cut inside a character
      while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
      if (!out.empty()) out.pop_back();
    }
    out += "...";
  }
  return out;
}

std::string json_snippet(const Json& value) { return printable(value.dump()); }

// "a number", "an array", ... for messages about wrong JSON types.
std::string json_kind(const Json& value) {
  std::string name = value.type_name();
  bool vowel = name[0] == 'a' || name[0] == 'o';
  return (vowel ? "an " : "a ") + name;
}

// Reads a JSON value that must be a non-negative integer that fits in uint64 (the parser stores integers above
// 2^64-1 as doubles, which land in the non-integer branch).
bool as_unsigned(const Json& value, uint64_t& out) {
  if (!value.is_number_unsigned()) return false;
  out = value.get<uint64_t>();
  return true;
}

struct Entry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

class HeaderReader {
 public:
  explicit HeaderReader(const std::string& what) : what_(what) {}

  [[noreturn]] void fail(const std::string& why) const { throw InputError(what_ + ": " + why); }

  // Also records the top-level keys in file order (Json itself sorts them by name) in top_level_keys().
  Json parse(const char* begin, const char* end) {
    // nlohmann keeps the last of repeated keys silently; the callback sees every key, so it can refuse repeats.
    // It also sees every nesting level before the value is built.
    std::vector<std::set<std::string>> open_objects;
    auto watch = [&](int depth, Json::parse_event_t event, Json& parsed) {
      switch (event) {
        case Json::parse_event_t::object_start:
        case Json::parse_event_t::array_start:
          if (depth >= kMaxJsonDepth)
            fail("JSON header nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
          if (event == Json::parse_event_t::object_start) open_objects.emplace_back();
          break;
        case Json::parse_event_t::object_end:
          open_objects.pop_back();
          break;
        case Json::parse_event_t::key: {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!open_objects.back().insert(key).second) {
            if (open_objects.size() == 1) fail("tensor name '" + printable(key) + "' appears twice (duplicate key)");
            fail("duplicate key '" + printable(key) + "' in the JSON header");
          }
          if (open_objects.size() == 1) top_level_keys_.push_back(key);
          break;
        }
        default:
          break;
      }
      return true;
    };
    try {
      return Json::parse(begin, end, watch);
    } catch (const Json::exception& e) {
      // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 5: ..."; drop the tag.
      std::string reason = e.what();
      if (reason.size() > 1 && reason[0] == '[') {
        size_t close = reason.find("] ");
        if (close != std::string::npos) reason = reason.substr(close + 2);
      }
      // The reason quotes the raw bytes the parser last read, which may be anything (invalid UTF-8 included).
      fail("malformed JSON header: " + printable(reason, 3 * kMaxQuotedChars, true));
    }
  }

  std::map<std::string, std::string> read_metadata(const Json& value) {
    std::map<std::string, std::string> metadata;
    if (value.is_null()) return metadata;  // the reference reader treats null as "no metadata"
    if (!value.is_object()) fail("__metadata__ is " + json_kind(value) + "; it must be an object of strings");
    for (const auto& [key, v] : value.items()) {
      if (!v.is_string())
        fail("__metadata__ value for '" + printable(key) + "' is " + json_kind(v) +
             "; metadata values must be strings");
      metadata[key] = v.get<std::string>();
    }
    return metadata;
  }

  Entry read_entry(const std::string& name, const Json& value, uint64_t data_bytes) {
    Entry e;
    e.name = name;
    const std::string tensor = "tensor " + printable(name);
    if (!value.is_object()) fail(tensor + " entry is " + json_kind(value) + ", not an object");
    // Extra fields are ignored, as the reference reader does; they cannot change how the data is read.
    auto field = [&](const char* key) -> const Json& {
      auto it = value.find(key);
      if (it == value.end()) fail(tensor + " has no " + key);
      return *it;
    };

    const Json& dtype = field("dtype");
    if (!dtype.is_string()) fail(tensor + " dtype is " + json_kind(dtype) + ", not a string");
    const std::string& dtype_name = dtype.get_ref<const std::string&>();
    bool known = std::any_of(std::begin(kKnownDtypes), std::end(kKnownDtypes),
                             [&](const char* d) { return dtype_name == d; });
    if (!known) fail(tensor + " has unknown dtype '" + printable(dtype_name) + "'");
    if (dtype_name != "F32") fail(tensor + " has dtype " + dtype_name + "; nudge reads F32");

    const Json& shape = field("shape");
    if (!shape.is_array()) fail(tensor + " shape is " + json_kind(shape) + ", not an array");
    uint64_t elements = 1;
    bool overflow = false;
    for (const Json& dim : shape) {
      uint64_t d = 0;
      if (!as_unsigned(dim, d)) {
        if (dim.is_number_integer()) fail(tensor + " shape has negative dim " + json_snippet(dim));
        fail(tensor + " shape has non-integer dim " + json_snippet(dim));
      }
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(tensor + " shape dim " + std::to_string(d) + " overflows int64");
      e.shape.push_back(static_cast<int64_t>(d));
      // Like the reference, any intermediate overflow is an error even if a later dim is 0.
      if (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d) overflow = true;
      elements *= d;
    }
    if (overflow || elements > std::numeric_limits<uint64_t>::max() / kF32Bytes)
      fail(tensor + " shape " + shape_to_string(e.shape) + " overflows: its byte size does not fit in 64 bits");
    uint64_t nbytes = elements * kF32Bytes;

    const Json& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 || !as_unsigned(offsets[0], e.begin) ||
        !as_unsigned(offsets[1], e.end))
      fail(tensor + " data_offsets " + json_snippet(offsets) + " is not [begin, end] with non-negative integers");
    const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
    if (e.begin > e.end) fail(tensor + " data_offsets " + range + " have begin > end");
    if (e.end - e.begin != nbytes)
      fail(tensor + " has shape " + shape_to_string(e.shape) + " (" + std::to_string(nbytes) +
           " bytes of F32) but data_offsets " + range + " span " + std::to_string(e.end - e.begin) + " bytes");
    if (e.end > data_bytes)
      fail(tensor + " data_offsets " + range + " run past the end of the data section (" +
           std::to_string(data_bytes) + " bytes)");
    return e;
  }

  const std::vector<std::string>& top_level_keys() const { return top_level_keys_; }

 private:
  std::string what_;
  std::vector<std::string> top_level_keys_;
};

// The little-endian header length in the first 8 bytes of `head`, checked against the limit and a file of file_bytes.
uint64_t checked_header_length(const std::string& head, uint64_t file_bytes, const HeaderReader& reader) {
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | static_cast<unsigned char>(head[i]);
  if (header_bytes > kMaxHeaderBytes)
    reader.fail("header length " + std::to_string(header_bytes) + " is absurd (the limit is " +
                std::to_string(kMaxHeaderBytes) + " bytes); this is not a safetensors file");
  if (header_bytes > file_bytes - 8)
    reader.fail("header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                std::to_string(file_bytes) + " bytes); the file is truncated or not safetensors");
  return header_bytes;
}

}  // namespace

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& what) {
  HeaderReader reader(what);
  if (bytes.size() < 8)
    reader.fail("file is " + std::to_string(bytes.size()) + " bytes, shorter than the 8-byte header length");
  const uint64_t header_bytes = checked_header_length(bytes, bytes.size(), reader);
  const size_t data_start = 8 + static_cast<size_t>(header_bytes);
  const uint64_t data_bytes = bytes.size() - data_start;

  Json header = reader.parse(bytes.data() + 8, bytes.data() + data_start);
  if (!header.is_object()) reader.fail("header is " + json_kind(header) + ", not a JSON object");

  SafetensorsFile file;
  std::vector<Entry> entries;
  // Header order breaks ties between empty tensors at the same offset, so such files round-trip in order.
  for (const std::string& key : reader.top_level_keys()) {
    const Json& value = header.at(key);
    if (key == "__metadata__")
      file.metadata = reader.read_metadata(value);
    else
      entries.push_back(reader.read_entry(key, value, data_bytes));
  }

  // Sorted by offsets, the tensors must tile [0, data_bytes) exactly: each begins where the previous ended.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  auto span = [](const Entry& e) { return "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ")"; };
  uint64_t cursor = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < cursor)
      reader.fail("tensors " + printable(previous->name) + " " + span(*previous) + " and " + printable(e.name) + " " +
                  span(e) + " overlap in the data section");
    if (e.begin > cursor)
      reader.fail("data bytes [" + std::to_string(cursor) + ", " + std::to_string(e.begin) +
                  ") belong to no tensor (a gap before tensor " + printable(e.name) +
                  "); safetensors requires the tensors to cover the data section");
    cursor = e.end;
    previous = &e;
  }
  if (cursor != data_bytes)
    reader.fail("data bytes [" + std::to_string(cursor) + ", " + std::to_string(data_bytes) +
                ") belong to no tensor (trailing bytes); safetensors requires the tensors to cover the data section");

  file.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t;
    t.shape = e.shape;
    t.data.resize(static_cast<size_t>((e.end - e.begin) / kF32Bytes));
    if (!t.data.empty()) std::memcpy(t.data.data(), bytes.data() + data_start + e.begin, e.end - e.begin);
    file.tensors.emplace_back(e.name, std::move(t));
  }
  return file;
}

SafetensorsFile read_safetensors(const std::string& path) {
  // The 8-byte header length is checked against the limit and the file's size before the file is read whole, so a
  // large file of anything else is refused at once.
  const std::string head = read_file_prefix(path, 8);
  if (head.size() == 8) checked_header_length(head, file_size(path), HeaderReader(path));
  return parse_safetensors(read_file(path), path);
}

std::string serialize_safetensors(const SafetensorsFile& file) {
  // ordered_json keeps insertion order, so the header reads like the reference writer's: metadata first, then the
  // tensors in data order, each as dtype, shape, data_offsets.
  using OrderedJson = nlohmann::ordered_json;
  OrderedJson header = OrderedJson::object();
  if (!file.metadata.empty()) {
    OrderedJson metadata = OrderedJson::object();
    for (const auto& [key, value] : file.metadata) metadata[key] = value;
    header["__metadata__"] = std::move(metadata);
  }
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& [name, t] : file.tensors) {
    if (name == "__metadata__")
      throw InternalError("cannot save a tensor named __metadata__ (reserved by safetensors)");
    if (!names.insert(name).second) throw InternalError("cannot save two tensors named '" + name + "'");
    for (int64_t d : t.shape)
      if (d < 0) throw InternalError("tensor " + name + " has negative shape " + shape_to_string(t.shape));
    if (t.data.size() != Tensor::element_count(t.shape))
      throw InternalError("tensor " + name + " has shape " + shape_to_string(t.shape) + " but " +
                          std::to_string(t.data.size()) + " values");
    uint64_t nbytes = t.data.size() * kF32Bytes;
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = "F32";
    entry["shape"] = t.shape;
    entry["data_offsets"] = OrderedJson::array({offset, offset + nbytes});
    header[name] = std::move(entry);
    offset += nbytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const OrderedJson::exception& e) {
    throw InternalError(std::string("cannot write safetensors header: ") + e.what());  // e.g. a non-UTF-8 name
  }
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  for (const auto& entry : file.tensors) {
    const Tensor& t = entry.second;
    out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * kF32Bytes);
  }
  return out;
}

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
  write_file_atomically(path, serialize_safetensors(file));
}

}  // namespace nudge
