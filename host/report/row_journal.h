// The journal of an optimize job: its rows, appended chunk by chunk and flushed to disk, so that a job stopped at any
// moment (SIGINT, SIGTERM, SIGKILL, a dead node) continues where it was (--resume), and so that shards and MPI ranks
// can be joined, with results byte-identical to an uninterrupted single run: every field of a row is kept exactly
// (floats as their bits), and the report is a pure function of the rows in order.
//
// File layout (little-endian):
//   "NUDGEJRN", u32 version, u32 header bytes, header JSON (JournalHeader)
//   blocks: "BLK1", u32 rows, u64 image steps, u64 payload bytes, payload, u64 FNV-1a of the payload
// A block is whole or it is not there: a reader stops at the first block that is cut short or fails its checksum
// (a kill during a write), and a writer that continues a journal cuts the file there first. Every length is checked
// against the bytes that remain before it is used: a journal given to `nudge merge` is read as hostile input.
#pragma once
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "optimize_engine.h"

namespace nudge {

// The first rows of each journal also keep their start image: the contact sheet shows the first kGridRows rows of a
// job with their start images, and those rows are always among the first kGridRows rows of their part.
constexpr long kJournalStartRows = 100;

struct JournalHeader {
  nlohmann::json job;       // the job as summary.json states it: a resume or a merge must match it
  long total_rows = 0;      // rows of the whole job
  long first_row = 0;       // this part holds rows [first_row, first_row + rows)
  long rows = 0;
  int part = 0, parts = 1;  // which shard or rank of how many
  int height = 0, width = 0, classes = 0, steps = 0;
  std::vector<float> target_dist;  // the job's soft target, empty for one-hot jobs
  bool judge = false;              // whether rows carry a judge's verdict
};

// One block's rows, decoded; the rows' image pointers point into this object's buffers.
struct JournalBlock {
  std::vector<RowResult> rows;
  long image_steps = 0;
  std::vector<float> pixels;  // the images, then the start images the block keeps
};

class RowJournalReader {
 public:
  // Reads the header; InputError naming the path when the file is not a nudge journal or its header is malformed.
  explicit RowJournalReader(const std::string& path);
  RowJournalReader(const RowJournalReader&) = delete;
  RowJournalReader& operator=(const RowJournalReader&) = delete;

  const JournalHeader& header() const { return header_; }
  // The next whole block, or false at the end of the whole blocks. A block whose rows do not continue the previous
  // ones (row numbers, the part's range) is an InputError: the file is not what its header says.
  bool next(JournalBlock& block);
  // Bytes up to the end of the last whole block read, and the rows and image steps in the blocks read so far.
  uint64_t valid_bytes() const { return valid_bytes_; }
  long rows_read() const { return rows_read_; }
  long image_steps_read() const { return image_steps_read_; }
  // Whether reading stopped at a cut-short or damaged block rather than at the end of the file.
  bool damaged_tail() const { return damaged_tail_; }

 private:
  std::string path_;
  // Closed however the object ends, also when its constructor throws after opening it.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_{nullptr, &std::fclose};
  uint64_t size_ = 0, valid_bytes_ = 0;
  long rows_read_ = 0, image_steps_read_ = 0;
  bool damaged_tail_ = false;
  JournalHeader header_;
};

// One journal block (head, payload, checksum) of `rows`, the part's rows from row `rows_before` of the part on
// (which decides the rows that keep their start image). D and K: pixels per image and classes, as in the header.
// An MPI rank encodes its blocks with this and sends them to the rank that writes the journal.
std::string encode_journal_block(const std::vector<RowResult>& rows, long image_steps, int D, int K, long rows_before);
// The rows an encoded block holds (its head's count); InternalError if `block` does not start like one.
long journal_block_rows(const std::string& block);

// Where an optimize job's rows go to be kept: the journal on disk, or (on an MPI rank) the rank that writes it.
class RowBlockSink {
 public:
  virtual ~RowBlockSink() = default;
  virtual void append(const std::vector<RowResult>& rows, long image_steps, int D, int K) = 0;
};

class RowJournalWriter : public RowBlockSink {
 public:
  // Starts a new journal at `path` (replacing any file there). The header is on disk when this returns.
  RowJournalWriter(const std::string& path, const JournalHeader& header);
  // Continues the journal at `path` after its first `valid_bytes` bytes (RowJournalReader::valid_bytes), which hold
  // `rows` rows; a damaged tail beyond them is cut off.
  RowJournalWriter(const std::string& path, uint64_t valid_bytes, long rows);
  RowJournalWriter(const RowJournalWriter&) = delete;
  RowJournalWriter& operator=(const RowJournalWriter&) = delete;

  // Appends one block and flushes it to disk (fdatasync) before returning; IoError naming the path on failure.
  // D and K: pixels per image and classes, as in the header.
  void append(const std::vector<RowResult>& rows, long image_steps, int D, int K) override;
  // Appends a block made by encode_journal_block for this journal's next rows, flushed like append().
  void append_block(const std::string& block);
  long rows_written() const { return rows_.load(); }  // also read by another thread (an MPI root's failure note)

 private:
  std::string path_;
  // Closed however the object ends, also when its constructor throws after opening it.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_{nullptr, &std::fclose};
  std::atomic<long> rows_{0};
};

}  // namespace nudge
