#include "job_journal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "atomic_file.h"
#include "errors.h"
#include "result_commit.h"

namespace nudge {

namespace {

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string short_json(const nlohmann::json& v) {
  if (v.is_null()) return "nothing";
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

}  // namespace

std::string spec_differences(const nlohmann::json& was, const nlohmann::json& now) {
  std::vector<std::string> keys;
  for (const auto& item : was.items()) keys.push_back(item.key());
  for (const auto& item : now.items())
    if (!was.contains(item.key())) keys.push_back(item.key());
  std::string out;
  int shown = 0, more = 0;
  for (const std::string& k : keys) {
    const nlohmann::json a = was.contains(k) ? was.at(k) : nlohmann::json();
    const nlohmann::json b = now.contains(k) ? now.at(k) : nlohmann::json();
    if (a == b) continue;
    if (shown == 3) {
      ++more;
      continue;
    }
    out += std::string(shown ? "; " : "") + k + ": the journal's job has " + short_json(a) + ", this command has " + short_json(b);
    ++shown;
  }
  if (more) out += "; and " + std::to_string(more) + " more";
  return out;
}

PartRange part_range(long rows, int part, int parts) {
  const auto at = [&](int k) {
    return static_cast<long>(static_cast<unsigned __int128>(rows) * static_cast<unsigned>(k) / static_cast<unsigned>(parts));
  };
  return {at(part), at(part + 1)};
}

std::string journal_folder(const std::string& dir) { return dir + "/.nudge-journal"; }

std::string journal_path(const std::string& dir, int part, int parts) {
  return journal_folder(dir) + "/part-" + std::to_string(part) + "-of-" + std::to_string(parts) + ".nudge";
}

JobJournal::JobJournal(const std::string& dir, const JournalHeader& header, bool resume, bool quiet)
    : dir_(dir), path_(journal_path(dir, header.part, header.parts)), header_(header) {
  if (resume && exists(path_)) {
    reader_ = std::make_unique<RowJournalReader>(path_);
    const JournalHeader& h = reader_->header();
    const std::string diff = spec_differences(h.job, header.job);
    if (!diff.empty())
      throw InputError("--resume: " + dir + " holds an interrupted job that differs from this one (" + diff +
                       "); run it as it was, or leave out --resume to start this job afresh");
    if (h.total_rows != header.total_rows || h.first_row != header.first_row || h.rows != header.rows ||
        h.height != header.height || h.width != header.width || h.classes != header.classes || h.judge != header.judge)
      throw InputError("--resume: the journal " + path_ + " does not match this job's rows or model (" +
                       std::to_string(h.rows) + " rows from row " + std::to_string(h.first_row) + " of " +
                       std::to_string(h.total_rows) + "); leave out --resume to start afresh");
    return;
  }
  if (resume) {
    // A job that a scheduler restarts runs the same command, --resume and all, also after it has finished.
    const std::string summary_path = dir + "/summary.json";
    if (exists(summary_path)) {
      const nlohmann::json s = nlohmann::json::parse(read_file(summary_path, 64 << 20), nullptr, false);
      if (s.is_object() && s.contains("job") && s["job"] == header.job) {
        complete_summary_ = s;
        return;
      }
    }
    if (!quiet) std::fprintf(stderr, "nudge: --resume: %s holds no journal of this job; starting from its first row\n", dir.c_str());
  }
  const std::string folder = journal_folder(dir);
  if (exists(folder)) {
    if (!quiet && !resume)
      std::fprintf(stderr, "nudge: discarded the journal of an interrupted job in %s (--resume would have continued it)\n",
                   dir.c_str());
    remove_flat_folder(folder);
  }
  if (::mkdir(folder.c_str(), 0777) != 0 && errno != EEXIST)
    throw IoError("I/O error: cannot create the journal folder " + folder + ": " + std::strerror(errno));
  writer_ = std::make_unique<RowJournalWriter>(path_, header);
  started_here_ = true;
}

JobJournal::~JobJournal() {
  if (started_here_ && writer_ && writer_->rows_written() == 0) {
    writer_.reset();
    remove_flat_folder(journal_folder(dir_));
  }
}

long JobJournal::replay(OptimizeReport& report) {
  if (!reader_) return 0;
  JournalBlock block;
  while (reader_->next(block)) report.rows(block.rows, block.image_steps);
  const long rows = reader_->rows_read();
  image_steps_replayed_ = reader_->image_steps_read();
  writer_ = std::make_unique<RowJournalWriter>(path_, reader_->valid_bytes(), rows);
  reader_.reset();
  return rows;
}

void JobJournal::stage_copy(const std::string& staged_path) {
  writer_.reset();  // flushed and closed: every block is on disk
  if (::link(path_.c_str(), staged_path.c_str()) == 0) return;
  write_file_atomically(staged_path, read_file(path_));
}

void JobJournal::remove() {
  writer_.reset();
  remove_flat_folder(journal_folder(dir_));
}

}  // namespace nudge
