#include "robustness_journal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>

#include "errors.h"
#include "journal_bytes.h"
#include "json_text.h"

namespace nudge {

namespace {

using namespace journal_bytes;

constexpr char kMagic[8] = {'N', 'U', 'D', 'G', 'E', 'R', 'B', 'J'};
constexpr char kBlockMagic[4] = {'R', 'B', 'K', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kMaxPayloadBytes = uint64_t{4} << 30;
constexpr uint32_t kMaxAttackId = static_cast<uint32_t>(AttackId::ApgdDlr);

// Bytes of one point's record and of the stage counts, for a job of E radii, D pixels and S stages.
size_t point_bytes(size_t E, size_t D) { return 8 + E * (1 + 5 * 4 + 4 * D); }
size_t stage_bytes(size_t E, size_t S) { return S * (16 * E + 16); }

nlohmann::json header_to_json(const RobustnessJournalHeader& h) {
  return {{"job", h.job},   {"total_points", h.total_points}, {"first_point", h.first_point}, {"points", h.points},
          {"part", h.part}, {"parts", h.parts},               {"eps", h.eps},                 {"pixels", h.pixels},
          {"classes", h.classes}, {"attacks", h.attacks}};
}

RobustnessJournalHeader header_from_json(const nlohmann::json& j, const std::string& path) {
  const std::string bad = path + " is not a nudge robustness journal (its header ";
  RobustnessJournalHeader h;
  try {
    h.job = j.at("job");
    h.total_points = j.at("total_points").get<long>();
    h.first_point = j.at("first_point").get<long>();
    h.points = j.at("points").get<long>();
    h.part = j.at("part").get<int>();
    h.parts = j.at("parts").get<int>();
    h.eps = j.at("eps").get<int>();
    h.pixels = j.at("pixels").get<int>();
    h.classes = j.at("classes").get<int>();
    h.attacks = j.at("attacks").get<std::vector<uint32_t>>();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(bad + "lacks a field or has one of the wrong type: " + e.what() + ")");
  }
  if (!h.job.is_object()) throw InputError(bad + "has no job)");
  if (h.eps < 1 || h.eps > 1024 || h.pixels < 1 || h.pixels > (1 << 24) || h.classes < 2 || h.classes > 65536)
    throw InputError(bad + "gives " + std::to_string(h.eps) + " radii, " + std::to_string(h.pixels) + " pixels, " +
                     std::to_string(h.classes) + " classes)");
  if (h.attacks.empty() || h.attacks.size() > 64)
    throw InputError(bad + "gives a cascade of " + std::to_string(h.attacks.size()) + " attacks)");
  for (uint32_t a : h.attacks)
    if (a < 1 || a > kMaxAttackId) throw InputError(bad + "names attack " + std::to_string(a) + ")");
  if (h.parts < 1 || h.part < 0 || h.part >= h.parts)
    throw InputError(bad + "names part " + std::to_string(h.part) + " of " + std::to_string(h.parts) + ")");
  if (h.total_points < 0 || h.total_points > INT32_MAX || h.first_point < 0 || h.points < 0 ||
      h.first_point > h.total_points || h.points > h.total_points - h.first_point)
    throw InputError(bad + "gives points outside the job)");
  return h;
}

}  // namespace

RobustnessResult empty_robustness_result(int points, int E, int D, int K, const std::vector<AttackId>& attacks) {
  RobustnessResult r;
  r.points = points;
  r.classes = K;
  r.D = D;
  r.label.assign(points, -1);
  r.clean_pred.assign(points, -1);
  const size_t entries = static_cast<size_t>(points) * E;
  r.robust.assign(entries, 0);
  r.attack.assign(entries, 0);
  r.restart.assign(entries, -1);
  r.step.assign(entries, -1);
  r.linf.assign(entries, 0.0f);
  r.l2.assign(entries, 0.0f);
  r.images.assign(entries * D, 0.0f);
  r.stages.resize(attacks.size());
  for (size_t s = 0; s < attacks.size(); ++s) {
    r.stages[s].attack = attacks[s];
    r.stages[s].attacked.assign(E, 0);
    r.stages[s].robust_after.assign(E, 0);
  }
  return r;
}

void place_slice(RobustnessResult& whole, long whole_first, const RobustnessResult& slice, long first) {
  const size_t E = whole.points > 0 ? whole.robust.size() / whole.points : 0;
  const long at = first - whole_first;
  if (at < 0 || at + slice.points > whole.points || slice.D != whole.D || slice.stages.size() != whole.stages.size() ||
      (slice.points > 0 && slice.robust.size() != static_cast<size_t>(slice.points) * E))
    throw InternalError("a robustness slice of points " + std::to_string(first) + "+" + std::to_string(slice.points) +
                        " does not fit the result of points " + std::to_string(whole_first) + "+" +
                        std::to_string(whole.points));
  const size_t D = static_cast<size_t>(whole.D), p0 = static_cast<size_t>(at), e0 = p0 * E;
  std::copy(slice.label.begin(), slice.label.end(), whole.label.begin() + p0);
  std::copy(slice.clean_pred.begin(), slice.clean_pred.end(), whole.clean_pred.begin() + p0);
  std::copy(slice.robust.begin(), slice.robust.end(), whole.robust.begin() + e0);
  std::copy(slice.attack.begin(), slice.attack.end(), whole.attack.begin() + e0);
  std::copy(slice.restart.begin(), slice.restart.end(), whole.restart.begin() + e0);
  std::copy(slice.step.begin(), slice.step.end(), whole.step.begin() + e0);
  std::copy(slice.linf.begin(), slice.linf.end(), whole.linf.begin() + e0);
  std::copy(slice.l2.begin(), slice.l2.end(), whole.l2.begin() + e0);
  std::copy(slice.images.begin(), slice.images.end(), whole.images.begin() + e0 * D);
  whole.clean_correct += slice.clean_correct;
  for (size_t s = 0; s < whole.stages.size(); ++s) {
    StageStats& w = whole.stages[s];
    const StageStats& x = slice.stages[s];
    for (size_t j = 0; j < E; ++j) {
      w.attacked[j] += x.attacked[j];
      w.robust_after[j] += x.robust_after[j];
    }
    w.cost += x.cost;
    w.seconds += x.seconds;
  }
}

std::string encode_robustness_block(const RobustnessResult& r, long first) {
  const size_t n = static_cast<size_t>(r.points), E = n ? r.robust.size() / n : 0, D = static_cast<size_t>(r.D);
  std::string p;
  p.reserve(n * point_bytes(E, D) + stage_bytes(E, r.stages.size()));
  for (size_t i = 0; i < n; ++i) {
    put<int32_t>(p, r.label[i]);
    put<int32_t>(p, r.clean_pred[i]);
    for (size_t j = 0; j < E; ++j) {
      const size_t e = i * E + j;
      p += static_cast<char>(r.robust[e]);
      for (int32_t v : {r.attack[e], r.restart[e], r.step[e]}) put<int32_t>(p, v);
      put<float>(p, r.linf[e]);
      put<float>(p, r.l2[e]);
      p.append(reinterpret_cast<const char*>(r.images.data() + e * D), 4 * D);
    }
  }
  for (const StageStats& s : r.stages) {
    for (long v : s.attacked) put<int64_t>(p, v);
    for (long v : s.robust_after) put<int64_t>(p, v);
    put<int64_t>(p, s.cost);
    put<double>(p, s.seconds);
  }
  return frame_block(kBlockMagic, static_cast<uint32_t>(n), static_cast<uint64_t>(first), p);
}

long robustness_block_points(const std::string& block) { return framed_count(block, kBlockMagic); }

std::string robustness_journal_path(const std::string& dir, int part, int parts) {
  return dir + "/.nudge-journal/robustness-" + std::to_string(part) + "-of-" + std::to_string(parts) + ".nudge";
}

RobustnessJournalReader::RobustnessJournalReader(const std::string& path) : path_(path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw InputError("cannot read " + path + ": not a regular file");
  size_ = static_cast<uint64_t>(st.st_size);
  file_.reset(std::fopen(path.c_str(), "rb"));
  if (!file_) throw InputError("cannot read " + path + ": " + std::strerror(errno));
  const std::string text = read_head(file_.get(), size_, path, kMagic, kVersion, "a nudge robustness journal", &valid_bytes_);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw InputError(path + " is not a nudge robustness journal (its header is not JSON)");
  header_ = header_from_json(j, path);
}


bool RobustnessJournalReader::next(RobustnessResult& r, long* first) {
  if (damaged_tail_ || valid_bytes_ == size_) return false;
  RawBlock raw;
  if (!read_block(file_.get(), size_ - valid_bytes_, kBlockMagic, kMaxPayloadBytes, raw)) {
    damaged_tail_ = true;
    return false;
  }
  // The checksum matched: a contradiction below is a forged or foreign file.
  const RobustnessJournalHeader& h = header_;
  const size_t E = static_cast<size_t>(h.eps), D = static_cast<size_t>(h.pixels), S = h.attacks.size();
  const long n = raw.count;
  const long expect_first = h.first_point + points_read_;
  if (n < 1 || n > h.points - points_read_)
    throw InputError(path_ + ": a block claims " + std::to_string(n) + " points; " +
                     std::to_string(h.points - points_read_) + " remain in its part");
  if (static_cast<long>(raw.tag) != expect_first || raw.tag > static_cast<uint64_t>(INT32_MAX))
    throw InputError(path_ + ": a block starts at point " + std::to_string(raw.tag) + " where point " +
                     std::to_string(expect_first) + " belongs");
  if (static_cast<uint64_t>(n) > raw.payload.size() / point_bytes(E, D))
    throw InputError(path_ + ": a block claims " + std::to_string(n) + " points in " + std::to_string(raw.payload.size()) +
                     " bytes");
  const uint64_t want = static_cast<uint64_t>(n) * point_bytes(E, D) + stage_bytes(E, S);
  if (raw.payload.size() != want)
    throw InputError(path_ + ": a block of " + std::to_string(n) + " points holds " + std::to_string(raw.payload.size()) +
                     " bytes, not " + std::to_string(want));
  std::vector<AttackId> attacks;
  for (uint32_t a : h.attacks) attacks.push_back(static_cast<AttackId>(a));
  r = empty_robustness_result(static_cast<int>(n), static_cast<int>(E), static_cast<int>(D), h.classes, attacks);
  Cursor c(raw.payload.data(), raw.payload.size(), path_);
  const auto bad = [&](long i, const std::string& what) {
    return InputError(path_ + ": point " + std::to_string(expect_first + i) + " " + what);
  };
  for (long i = 0; i < n; ++i) {
    r.label[i] = c.get<int32_t>();
    r.clean_pred[i] = c.get<int32_t>();
    if (r.label[i] < 0 || r.label[i] >= h.classes || r.clean_pred[i] < 0 || r.clean_pred[i] >= h.classes)
      throw bad(i, "has a class outside the model's");
    r.clean_correct += r.label[i] == r.clean_pred[i];
    for (size_t j = 0; j < E; ++j) {
      const size_t e = static_cast<size_t>(i) * E + j;
      r.robust[e] = static_cast<uint8_t>(*c.take(1));
      r.attack[e] = c.get<int32_t>();
      r.restart[e] = c.get<int32_t>();
      r.step[e] = c.get<int32_t>();
      r.linf[e] = c.get<float>();
      r.l2[e] = c.get<float>();
      std::memcpy(r.images.data() + e * D, c.take(4 * D), 4 * D);
      const bool attacked_ok = r.attack[e] == 0 || std::find(h.attacks.begin(), h.attacks.end(),
                                                              static_cast<uint32_t>(r.attack[e])) != h.attacks.end();
      if (r.robust[e] > 1 || !attacked_ok || (r.robust[e] && r.attack[e] != 0) ||
          (r.robust[e] && r.label[i] != r.clean_pred[i]) || r.restart[e] < -1 || r.step[e] < -1 ||
          !(r.linf[e] >= 0) || !(r.l2[e] >= 0) || !std::isfinite(r.linf[e]) || !std::isfinite(r.l2[e]))
        throw bad(i, "holds a value outside its evaluation");
      for (size_t q = 0; q < D; ++q) {
        const float v = r.images[e * D + q];
        if (!(v >= 0.0f && v <= 1.0f)) throw bad(i, "has a pixel outside [0,1]");
      }
    }
  }
  for (StageStats& s : r.stages) {
    for (long& v : s.attacked) v = c.get<int64_t>();
    for (long& v : s.robust_after) v = c.get<int64_t>();
    s.cost = c.get<int64_t>();
    s.seconds = c.get<double>();
    for (size_t j = 0; j < E; ++j)
      if (s.attacked[j] < 0 || s.attacked[j] > n || s.robust_after[j] < 0 || s.robust_after[j] > s.attacked[j])
        throw InputError(path_ + ": a block's stage counts are outside its " + std::to_string(n) + " points");
    if (s.cost < 0 || !(s.seconds >= 0) || !std::isfinite(s.seconds))
      throw InputError(path_ + ": a block's stage cost or time is negative or not finite");
  }
  *first = expect_first;
  points_read_ += n;
  valid_bytes_ += kBlockHeadBytes + raw.payload.size() + 8;
  return true;
}

RobustnessJournalWriter::RobustnessJournalWriter(const std::string& path, const RobustnessJournalHeader& header)
    : path_(path) {
  file_.reset(std::fopen(path.c_str(), "wb"));
  if (!file_) throw IoError("I/O error: cannot create the journal " + path + ": " + std::strerror(errno));
  const std::string head = encode_head(kMagic, kVersion, json_text(header_to_json(header)));
  write_all(file_.get(), head.data(), head.size(), path_);
  flush_to_disk(file_.get(), path_);
}

RobustnessJournalWriter::RobustnessJournalWriter(const std::string& path, uint64_t valid_bytes, long points)
    : path_(path), points_(points) {
  file_.reset(std::fopen(path.c_str(), "r+b"));
  if (!file_) throw IoError("I/O error: cannot open the journal " + path + ": " + std::strerror(errno));
  if (::ftruncate(::fileno(file_.get()), static_cast<off_t>(valid_bytes)) != 0 || std::fseek(file_.get(), 0, SEEK_END) != 0)
    throw IoError("I/O error: cannot cut the journal " + path + " after its last whole block: " + std::strerror(errno));
}


void RobustnessJournalWriter::append_block(const std::string& block) {
  const long n = robustness_block_points(block);
  write_all(file_.get(), block.data(), block.size(), path_);
  flush_to_disk(file_.get(), path_);
  points_ += n;
}

}  // namespace nudge
