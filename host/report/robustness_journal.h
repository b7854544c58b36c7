// The journal of a robustness evaluation (nudge robustness): its points' results, appended slice by slice (a slice is
// the points evaluated at once, --chunk) and flushed to disk, so that an evaluation stopped at any moment continues
// with --resume, and so that MPI ranks' parts can be joined, with results byte-identical to an uninterrupted run:
// every point's draws are keyed by its index in the job, never by the slice it is evaluated in.
//
// File layout (little-endian), OUT/.nudge-journal/robustness-K-of-N.nudge:
//   "NUDGERBJ", u32 version, u32 header bytes, header JSON (RobustnessJournalHeader)
//   blocks: "RBK1", u32 points, u64 first point, u64 payload bytes, payload, u64 FNV-1a of the payload
//   payload: per point i32 label, i32 clean class; per entry (point-major, eps-minor) u8 robust, i32 attack,
//            i32 restart, i32 step, f32 linf, f32 l2, f32 image[pixels]; per stage i64 attacked[eps],
//            i64 robust_after[eps], i64 cost, f64 seconds
// As with the row journal, a reader stops at the first block that is cut short or fails its checksum, and every
// length and value is checked before use.
#pragma once
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "robustness.h"

namespace nudge {

struct RobustnessJournalHeader {
  nlohmann::json job;          // the evaluation as summary.json states it: a resume must match it
  long total_points = 0;       // points of the whole job
  long first_point = 0;        // this part holds points [first_point, first_point + points)
  long points = 0;
  int part = 0, parts = 1;
  int eps = 0, pixels = 0, classes = 0;
  std::vector<uint32_t> attacks;  // the cascade, as AttackId values
};

// One slice of results (evaluate_robustness's, for `slice.points` points from job point `first` on) as a block.
std::string encode_robustness_block(const RobustnessResult& slice, long first);
long robustness_block_points(const std::string& block);

// Copies `slice` (points from `first` on) into `whole` (the job's or a part's result, points from `whole_first` on,
// its arrays and stages sized for all its points) and adds its stage counts. InternalError if it does not fit.
void place_slice(RobustnessResult& whole, long whole_first, const RobustnessResult& slice, long first);

// An empty result for `points` points (labels -1) with `stages` zeroed for the cascade, as place_slice fills it.
RobustnessResult empty_robustness_result(int points, int E, int D, int K, const std::vector<AttackId>& attacks);

class RobustnessJournalReader {
 public:
  // InputError naming the path when it is not a robustness journal or its header is malformed.
  explicit RobustnessJournalReader(const std::string& path);
  RobustnessJournalReader(const RobustnessJournalReader&) = delete;
  RobustnessJournalReader& operator=(const RobustnessJournalReader&) = delete;

  const RobustnessJournalHeader& header() const { return header_; }
  // The next whole block as a slice and its first point, or false at the end of the whole blocks.
  bool next(RobustnessResult& slice, long* first);
  uint64_t valid_bytes() const { return valid_bytes_; }
  long points_read() const { return points_read_; }
  bool damaged_tail() const { return damaged_tail_; }

 private:
  std::string path_;
  // Closed however the object ends, also when its constructor throws after opening it.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_{nullptr, &std::fclose};
  uint64_t size_ = 0, valid_bytes_ = 0;
  long points_read_ = 0;
  bool damaged_tail_ = false;
  RobustnessJournalHeader header_;
};

class RobustnessJournalWriter {
 public:
  // Starts a new journal at `path`; the header is on disk when this returns.
  RobustnessJournalWriter(const std::string& path, const RobustnessJournalHeader& header);
  // Continues one after its first `valid_bytes` bytes, which hold `points` points (a damaged tail is cut off).
  RobustnessJournalWriter(const std::string& path, uint64_t valid_bytes, long points);
  RobustnessJournalWriter(const RobustnessJournalWriter&) = delete;
  RobustnessJournalWriter& operator=(const RobustnessJournalWriter&) = delete;

  // Appends a block from encode_robustness_block and flushes it to disk (fdatasync); IoError on failure.
  void append_block(const std::string& block);
  long points_written() const { return points_.load(); }

 private:
  std::string path_;
  // Closed however the object ends, also when its constructor throws after opening it.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_{nullptr, &std::fclose};
  std::atomic<long> points_{0};
};

// The journal file of part K of N in an output folder.
std::string robustness_journal_path(const std::string& dir, int part, int parts);

}  // namespace nudge
