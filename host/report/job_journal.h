// An optimize job's journal in its output folder, DIR/.nudge-journal/part-K-of-N.nudge (K of N: the shard or MPI rank;
// 0 of 1 for a whole job), and the decisions around it: continue it (--resume, the same job), refuse a resume whose
// job differs (saying what differs), or start afresh. Used with the folder's OutputLock held.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "optimize_report.h"
#include "row_journal.h"

namespace nudge {

// "steps: the journal's job has 100, this command has 200; seed: ..." (at most three differences), "" if equal.
std::string spec_differences(const nlohmann::json& journal_job, const nlohmann::json& this_job);

// The rows [first, end) of part K of N of a job of `rows` rows: N contiguous parts whose sizes differ by at most one.
struct PartRange {
  long first = 0, end = 0;
};
PartRange part_range(long rows, int part, int parts);

// The journal's folder and the file of one part in it.
std::string journal_folder(const std::string& dir);
std::string journal_path(const std::string& dir, int part, int parts);

class JobJournal {
 public:
  // resume: continue DIR's journal of this part if there is one (InputError if its job differs from header.job, or if
  // the journal was written as another number of parts); without one, a folder that already holds this job's
  // complete results is reported by already_complete(). Otherwise the journal is started afresh (any older journal
  // in the folder is removed, with a note on stderr).
  JobJournal(const std::string& dir, const JournalHeader& header, bool resume, bool quiet)
      : JobJournal(dir, std::vector<JournalHeader>{header}, resume, quiet) {}
  // Several parts of one job side by side (an MPI job's root keeps every rank's part); each header names its part.
  JobJournal(const std::string& dir, const std::vector<JournalHeader>& parts, bool resume, bool quiet);
  // A journal started here that never received a row is removed again: a job that failed before its first chunk
  // leaves nothing to resume.
  ~JobJournal();

  // --resume on a folder whose summary.json is this very job's: nothing to do; the summary it holds.
  bool already_complete() const { return !complete_summary_.is_null(); }
  const nlohmann::json& complete_summary() const { return complete_summary_; }
  // One part: feeds the rows the journal already holds into `report`, in order, and opens the journal for appending
  // after them. Returns the number of rows; image_steps_replayed() then counts theirs.
  long replay(OptimizeReport& report);
  // Every part: opens it for appending after the rows it already holds, without reading them into a report;
  // returns those row counts, by part.
  std::vector<long> open_parts();
  // After every part is complete: closes the writers and feeds all parts' rows, part by part, into `report`.
  // Returns the image steps they hold.
  long replay_all(OptimizeReport& report);
  RowJournalWriter& writer(size_t part = 0) { return *parts_.at(part).writer; }
  // The rows the parts hold on disk (also after replay_all closed them), for the note of a failed job.
  long rows_kept() const;
  long image_steps_replayed() const { return image_steps_replayed_; }
  // Before the commit of a shard's results: the part's file also appears at `staged_path` (a hard link, or a copy
  // where the file system has none), as the shard's rows.nudge that nudge merge reads.
  void stage_copy(const std::string& staged_path);
  // After the results are committed: removes the journal (its rows are in the folder's files now). A job killed
  // between the commit and this leaves a journal whose resume commits the same results again.
  void remove();

 private:
  struct Part {
    JournalHeader header;
    std::string path;
    std::unique_ptr<RowJournalReader> reader;  // the rows a resumed part holds, until they are read
    std::unique_ptr<RowJournalWriter> writer;
    long closed_rows = 0;  // rows_written() when replay_all closed the writer
  };
  void check_resumable(const Part& part) const;
  std::string dir_;
  std::vector<Part> parts_;
  nlohmann::json complete_summary_;
  long image_steps_replayed_ = 0;
  bool started_here_ = false;
};

}  // namespace nudge
