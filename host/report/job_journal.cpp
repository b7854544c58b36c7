#include "job_journal.h"

#include <dirent.h>
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

namespace {

// The part count of the journal files in `folder` (part-K-of-N.nudge) other than `parts`, or 0 if there are none.
int other_partitioning(const std::string& folder, int parts) {
  DIR* d = ::opendir(folder.c_str());
  if (!d) return 0;
  int found = 0;
  while (const dirent* e = ::readdir(d)) {
    int k = 0, n = 0;
    char tail[8] = {0};
    if (std::sscanf(e->d_name, "part-%d-of-%d.%7s", &k, &n, tail) == 3 && std::strcmp(tail, "nudge") == 0 && n != parts) {
      found = n;
      break;
    }
  }
  ::closedir(d);
  return found;
}

}  // namespace

void JobJournal::check_resumable(const Part& p) const {
  const JournalHeader& h = p.reader->header();
  const JournalHeader& want = p.header;
  const std::string diff = spec_differences(h.job, want.job);
  if (!diff.empty())
    throw InputError("--resume: " + dir_ + " holds an interrupted job that differs from this one (" + diff +
                     "); run it as it was, or leave out --resume to start this job afresh");
  if (h.total_rows != want.total_rows || h.first_row != want.first_row || h.rows != want.rows || h.part != want.part ||
      h.parts != want.parts || h.height != want.height || h.width != want.width || h.classes != want.classes ||
      h.judge != want.judge)
    throw InputError("--resume: the journal " + p.path + " does not match this job's rows or model (" +
                     std::to_string(h.rows) + " rows from row " + std::to_string(h.first_row) + " of " +
                     std::to_string(h.total_rows) + "); leave out --resume to start afresh");
}

JobJournal::JobJournal(const std::string& dir, const std::vector<JournalHeader>& headers, bool resume, bool quiet)
    : dir_(dir) {
  if (headers.empty()) throw InternalError("a job journal needs at least one part");
  for (const JournalHeader& h : headers) parts_.push_back({h, journal_path(dir, h.part, h.parts), nullptr, nullptr});
  const std::string folder = journal_folder(dir);
  const int parts = headers.front().parts;
  if (resume) {
    bool any = false;
    for (const Part& p : parts_) any = any || exists(p.path);
    if (any) {
      // A part without a file (possible only if a kill came between the parts' creation) starts empty.
      for (Part& p : parts_) {
        if (exists(p.path)) {
          p.reader = std::make_unique<RowJournalReader>(p.path);
          check_resumable(p);
        } else {
          p.writer = std::make_unique<RowJournalWriter>(p.path, p.header);
        }
      }
      return;
    }
    if (const int n = other_partitioning(folder, parts))
      throw InputError("--resume: the journal in " + dir + " was written as " + std::to_string(n) + " parts (mpirun -np " +
                       std::to_string(n) + ", or --shard K/" + std::to_string(n) + "); this job runs as " +
                       std::to_string(parts) + ": resume it as it was run, or leave out --resume to start afresh");
    // A job that a scheduler restarts runs the same command, --resume and all, also after it has finished.
    const std::string summary_path = dir + "/summary.json";
    if (exists(summary_path)) {
      const nlohmann::json s = nlohmann::json::parse(read_file(summary_path, 64 << 20), nullptr, false);
      if (s.is_object() && s.contains("job") && s["job"] == headers.front().job) {
        complete_summary_ = s;
        return;
      }
    }
    if (!quiet) std::fprintf(stderr, "nudge: --resume: %s holds no journal of this job; starting from its first row\n", dir.c_str());
  }
  if (exists(folder)) {
    if (!quiet && !resume)
      std::fprintf(stderr, "nudge: discarded the journal of an interrupted job in %s (--resume would have continued it)\n",
                   dir.c_str());
    remove_flat_folder(folder);
  }
  if (::mkdir(folder.c_str(), 0777) != 0 && errno != EEXIST)
    throw IoError("I/O error: cannot create the journal folder " + folder + ": " + std::strerror(errno));
  for (Part& p : parts_) p.writer = std::make_unique<RowJournalWriter>(p.path, p.header);
  started_here_ = true;
}

JobJournal::~JobJournal() {
  if (!started_here_) return;
  for (const Part& p : parts_)
    if (!p.writer || p.writer->rows_written() > 0) return;
  parts_.clear();
  remove_flat_folder(journal_folder(dir_));
}

long JobJournal::replay(OptimizeReport& report) {
  Part& p = parts_.at(0);
  if (!p.reader) return 0;
  JournalBlock block;
  while (p.reader->next(block)) report.rows(block.rows, block.image_steps);
  const long rows = p.reader->rows_read();
  image_steps_replayed_ = p.reader->image_steps_read();
  p.writer = std::make_unique<RowJournalWriter>(p.path, p.reader->valid_bytes(), rows);
  p.reader.reset();
  return rows;
}

std::vector<long> JobJournal::open_parts() {
  std::vector<long> done;
  for (Part& p : parts_) {
    if (p.reader) {
      JournalBlock block;
      while (p.reader->next(block)) {
      }
      p.writer = std::make_unique<RowJournalWriter>(p.path, p.reader->valid_bytes(), p.reader->rows_read());
      p.reader.reset();
    }
    done.push_back(p.writer->rows_written());
  }
  return done;
}

long JobJournal::replay_all(OptimizeReport& report) {
  long steps = 0;
  for (Part& p : parts_) {
    const long expect = p.header.rows;
    if (p.writer && p.writer->rows_written() != expect)
      throw InternalError("journal part " + p.path + " holds " + std::to_string(p.writer->rows_written()) + " of its " +
                          std::to_string(expect) + " rows");
    if (p.writer) p.closed_rows = p.writer->rows_written();
    p.writer.reset();  // flushed and closed: every block is on disk
    RowJournalReader reader(p.path);
    JournalBlock block;
    while (reader.next(block)) report.rows(block.rows, block.image_steps);
    if (reader.rows_read() != expect || reader.damaged_tail())
      throw InternalError("journal part " + p.path + " read back " + std::to_string(reader.rows_read()) + " of its " +
                          std::to_string(expect) + " rows");
    steps += reader.image_steps_read();
  }
  return steps;
}

long JobJournal::rows_kept() const {
  long kept = 0;
  for (const Part& p : parts_) kept += p.writer ? p.writer->rows_written() : p.closed_rows;
  return kept;
}

void JobJournal::stage_copy(const std::string& staged_path) {
  Part& p = parts_.at(0);
  p.writer.reset();  // flushed and closed: every block is on disk
  if (::link(p.path.c_str(), staged_path.c_str()) == 0) return;
  write_file_atomically(staged_path, read_file(p.path));
}

void JobJournal::remove() {
  parts_.clear();
  remove_flat_folder(journal_folder(dir_));
}

}  // namespace nudge
