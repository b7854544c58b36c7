#include "row_journal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "errors.h"
#include "fnv1a.h"
#include "journal_bytes.h"
#include "json_text.h"

namespace nudge {

namespace {

using namespace journal_bytes;

constexpr char kMagic[8] = {'N', 'U', 'D', 'G', 'E', 'J', 'R', 'N'};
constexpr char kBlockMagic[4] = {'B', 'L', 'K', '1'};
constexpr uint32_t kVersion = 1;
// Far beyond any chunk (a chunk of 65,536 rows of 28x28 images is 400 MB with its start images), small enough that a
// damaged length cannot ask for the machine's memory.
constexpr uint64_t kMaxPayloadBytes = uint64_t{4} << 30;
// Bytes of a row record before its name, probabilities and pixels: 3 x i64, 9 x i32, 5 x f32, u32 name length.
constexpr size_t kRecordFixedBytes = 3 * 8 + 9 * 4 + 5 * 4 + 4;
constexpr uint32_t kMaxNameBytes = 1u << 16;



nlohmann::json header_to_json(const JournalHeader& h) {
  return {{"job", h.job},         {"total_rows", h.total_rows}, {"first_row", h.first_row}, {"rows", h.rows},
          {"part", h.part},       {"parts", h.parts},           {"height", h.height},       {"width", h.width},
          {"classes", h.classes}, {"steps", h.steps},           {"target_dist", h.target_dist}, {"judge", h.judge}};
}

JournalHeader header_from_json(const nlohmann::json& j, const std::string& path) {
  const std::string bad = path + " is not a nudge journal (its header ";
  JournalHeader h;
  try {
    h.job = j.at("job");
    h.total_rows = j.at("total_rows").get<long>();
    h.first_row = j.at("first_row").get<long>();
    h.rows = j.at("rows").get<long>();
    h.part = j.at("part").get<int>();
    h.parts = j.at("parts").get<int>();
    h.height = j.at("height").get<int>();
    h.width = j.at("width").get<int>();
    h.classes = j.at("classes").get<int>();
    h.steps = j.at("steps").get<int>();
    h.target_dist = j.at("target_dist").get<std::vector<float>>();
    h.judge = j.at("judge").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(bad + "lacks a field or has one of the wrong type: " + e.what() + ")");
  }
  if (!h.job.is_object()) throw InputError(bad + "has no job)");
  if (h.height < 1 || h.width < 1 || h.height > 16384 || h.width > 16384 || long{h.height} * h.width > (1L << 24))
    throw InputError(bad + "gives an image size of " + std::to_string(h.height) + "x" + std::to_string(h.width) + ")");
  if (h.classes < 1 || h.classes > 65536) throw InputError(bad + "gives " + std::to_string(h.classes) + " classes)");
  if (h.steps < 0) throw InputError(bad + "gives a negative step count)");
  if (!h.target_dist.empty() && h.target_dist.size() != static_cast<size_t>(h.classes))
    throw InputError(bad + "has a target distribution of the wrong length)");
  if (h.parts < 1 || h.part < 0 || h.part >= h.parts) throw InputError(bad + "names part " + std::to_string(h.part) +
                                                                       " of " + std::to_string(h.parts) + ")");
  if (h.total_rows < 0 || h.first_row < 0 || h.rows < 0 || h.first_row > h.total_rows || h.rows > h.total_rows - h.first_row)
    throw InputError(bad + "gives rows outside the job)");
  return h;
}



}  // namespace

RowJournalReader::RowJournalReader(const std::string& path) : path_(path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw InputError("cannot read " + path + ": not a regular file");
  size_ = static_cast<uint64_t>(st.st_size);
  file_.reset(std::fopen(path.c_str(), "rb"));
  if (!file_) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  const std::string text = read_head(file_.get(), size_, path, kMagic, kVersion, "a nudge journal", &valid_bytes_);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw InputError(path + " is not a nudge journal (its header is not JSON)");
  header_ = header_from_json(j, path);
}


bool RowJournalReader::next(JournalBlock& block) {
  if (damaged_tail_ || valid_bytes_ == size_) return false;
  RawBlock raw;
  if (!read_block(file_.get(), size_ - valid_bytes_, kBlockMagic, kMaxPayloadBytes, raw)) {
    damaged_tail_ = true;
    return false;
  }
  const uint32_t nrows = raw.count;
  const uint64_t steps = raw.tag;
  const std::string& payload = raw.payload;

  // The checksum matched, so what follows was written as it stands: a contradiction is a forged or foreign file.
  const JournalHeader& h = header_;
  const size_t D = static_cast<size_t>(h.height) * h.width, K = static_cast<size_t>(h.classes);
  const std::string what = path_;
  const size_t min_record = kRecordFixedBytes + 4 * K + 4 * D + 1;
  if (nrows == 0 || nrows > payload.size() / min_record)
    throw InputError(path_ + ": a block claims " + std::to_string(nrows) + " rows in " + std::to_string(payload.size()) +
                     " bytes");
  if (static_cast<long>(nrows) > h.rows - rows_read_)
    throw InputError(path_ + ": its blocks hold more rows than its header's " + std::to_string(h.rows));
  if (steps > static_cast<uint64_t>(nrows) * static_cast<uint64_t>(INT32_MAX) * 4096)
    throw InputError(path_ + ": a block claims " + std::to_string(steps) + " image steps");
  block.rows.assign(nrows, RowResult{});
  block.image_steps = static_cast<long>(steps);
  block.pixels.resize(nrows * D);
  std::vector<float> starts;
  std::vector<size_t> start_of;  // per row: index into starts, or SIZE_MAX
  Cursor c(payload.data(), payload.size(), what);
  for (uint32_t i = 0; i < nrows; ++i) {
    RowResult& r = block.rows[i];
    r.row = c.get<int64_t>();
    r.source = c.get<int64_t>();
    r.dataset_index = c.get<int64_t>();
    r.label = c.get<int32_t>();
    r.start_class = c.get<int32_t>();
    const int32_t kind = c.get<int32_t>();
    r.target.cls = c.get<int32_t>();
    r.success = c.get<int32_t>() != 0;
    r.success_step = c.get<int32_t>();
    r.updates = c.get<int32_t>();
    r.restart = c.get<int32_t>();
    r.judge_class = c.get<int32_t>();
    r.loss = c.get<float>();
    r.eps = c.get<float>();
    r.linf = c.get<float>();
    r.l2 = c.get<float>();
    r.judge_p_target = c.get<float>();
    const uint32_t name_bytes = c.get<uint32_t>();
    if (name_bytes > kMaxNameBytes) throw InputError(path_ + ": a row's source name is " + std::to_string(name_bytes) + " bytes");
    r.source_name.assign(c.take(name_bytes), name_bytes);
    r.probs.resize(K);
    std::memcpy(r.probs.data(), c.take(4 * K), 4 * K);
    std::memcpy(block.pixels.data() + i * D, c.take(4 * D), 4 * D);
    const long expect = h.first_row + rows_read_ + static_cast<long>(i);
    if (r.row != expect)
      throw InputError(path_ + ": row " + std::to_string(r.row) + " where row " + std::to_string(expect) + " belongs");
    if (kind < static_cast<int32_t>(TargetKind::OneHot) || kind > static_cast<int32_t>(TargetKind::Untargeted))
      throw InputError(path_ + ": row " + std::to_string(r.row) + " has target kind " + std::to_string(kind));
    r.target.kind = static_cast<TargetKind>(kind);
    const bool cls_ok = r.target.kind == TargetKind::Soft ? r.target.cls == -1
                                                           : r.target.cls >= -1 && r.target.cls < h.classes;
    if (!cls_ok || r.start_class < 0 || r.start_class >= h.classes || r.label < -1 || r.label >= h.classes ||
        r.judge_class < -1 || r.judge_class >= h.classes || (r.judge_class >= 0) != h.judge || r.source < 0 ||
        r.updates < 0 || r.updates > h.steps || r.success_step < -1 || r.success_step > h.steps || r.restart < 0)
      throw InputError(path_ + ": row " + std::to_string(r.row) + " holds a value outside its job");
    const uint8_t has_start = static_cast<uint8_t>(*c.take(1));
    if (has_start > 1) throw InputError(path_ + ": row " + std::to_string(r.row) + " has a bad start-image flag");
    if (has_start) {
      start_of.push_back(starts.size());
      const size_t at = starts.size();
      starts.resize(at + D);
      std::memcpy(starts.data() + at, c.take(4 * D), 4 * D);
    } else {
      start_of.push_back(SIZE_MAX);
    }
    if ((rows_read_ + static_cast<long>(i) < kJournalStartRows) != (has_start == 1))
      throw InputError(path_ + ": row " + std::to_string(r.row) + (has_start ? " keeps" : " lacks") + " its start image");
  }
  if (c.left() != 0) throw InputError(path_ + ": a block has " + std::to_string(c.left()) + " bytes after its rows");
  const size_t images = block.pixels.size();
  block.pixels.insert(block.pixels.end(), starts.begin(), starts.end());
  for (uint32_t i = 0; i < nrows; ++i) {
    block.rows[i].image = block.pixels.data() + i * D;
    block.rows[i].start = start_of[i] == SIZE_MAX ? nullptr : block.pixels.data() + images + start_of[i];
  }
  rows_read_ += nrows;
  image_steps_read_ += block.image_steps;
  valid_bytes_ += kBlockHeadBytes + payload.size() + 8;
  return true;
}

RowJournalWriter::RowJournalWriter(const std::string& path, const JournalHeader& header) : path_(path) {
  file_.reset(std::fopen(path.c_str(), "wb"));
  if (!file_) throw IoError("I/O error: cannot create the journal " + path + ": " + std::strerror(errno));
  const std::string head = encode_head(kMagic, kVersion, json_text(header_to_json(header)));
  write_all(file_.get(), head.data(), head.size(), path_);
  flush_to_disk(file_.get(), path_);
}

RowJournalWriter::RowJournalWriter(const std::string& path, uint64_t valid_bytes, long rows) : path_(path), rows_(rows) {
  file_.reset(std::fopen(path.c_str(), "r+b"));
  if (!file_) throw IoError("I/O error: cannot open the journal " + path + ": " + std::strerror(errno));
  if (::ftruncate(::fileno(file_.get()), static_cast<off_t>(valid_bytes)) != 0 || std::fseek(file_.get(), 0, SEEK_END) != 0)
    throw IoError("I/O error: cannot cut the journal " + path + " after its last whole block: " + std::strerror(errno));
}


std::string encode_journal_block(const std::vector<RowResult>& rows, long image_steps, int D, int K, long rows_before) {
  std::string p;
  const size_t d = static_cast<size_t>(D), k = static_cast<size_t>(K);
  p.reserve(rows.size() * (kRecordFixedBytes + 4 * (k + d) + 1 + 32));
  for (size_t i = 0; i < rows.size(); ++i) {
    const RowResult& r = rows[i];
    if (r.probs.size() != k) throw InternalError("journal: a row has " + std::to_string(r.probs.size()) + " probabilities");
    put<int64_t>(p, r.row);
    put<int64_t>(p, r.source);
    put<int64_t>(p, r.dataset_index);
    for (int32_t v : {r.label, r.start_class, static_cast<int32_t>(r.target.kind), r.target.cls,
                      static_cast<int32_t>(r.success), r.success_step, r.updates, r.restart, r.judge_class})
      put<int32_t>(p, v);
    for (float v : {r.loss, r.eps, r.linf, r.l2, r.judge_p_target}) put<float>(p, v);
    put<uint32_t>(p, static_cast<uint32_t>(r.source_name.size()));
    p += r.source_name;
    p.append(reinterpret_cast<const char*>(r.probs.data()), 4 * k);
    p.append(reinterpret_cast<const char*>(r.image), 4 * d);
    const bool keep_start = rows_before + static_cast<long>(i) < kJournalStartRows;
    p += static_cast<char>(keep_start ? 1 : 0);
    if (keep_start) p.append(reinterpret_cast<const char*>(r.start), 4 * d);
  }
  return frame_block(kBlockMagic, static_cast<uint32_t>(rows.size()), static_cast<uint64_t>(image_steps), p);
}

long journal_block_rows(const std::string& block) { return framed_count(block, kBlockMagic); }

void RowJournalWriter::append(const std::vector<RowResult>& rows, long image_steps, int D, int K) {
  if (rows.empty()) return;
  append_block(encode_journal_block(rows, image_steps, D, K, rows_.load()));
}

void RowJournalWriter::append_block(const std::string& block) {
  const long n = journal_block_rows(block);
  write_all(file_.get(), block.data(), block.size(), path_);
  flush_to_disk(file_.get(), path_);
  rows_ += n;
}

}  // namespace nudge
