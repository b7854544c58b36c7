// An output folder's results as one unit. A job writes its files into a staging folder, DIR/.nudge-staging.<pid>;
// commit() then writes a commit record, DIR/.nudge-commit, naming the staging folder and the new set, renames the new
// files into place, removes the files of the previous set that the new one lacks (a 0-row run's missing grid.png),
// renames summary.json last and removes the record. A job killed during those renames leaves the record behind, and
// the next nudge job to lock the folder finishes the commit before anything else (recover_commit). So the folder
// holds the complete previous set, the complete new set, or, for the moments of a commit's renames, a record that
// completes it; summary.json lists the files of its set with their sizes, so a reader can check a set.
// Everything here runs with the folder's OutputLock held.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace nudge {

// The names of every file a nudge job writes as its results: a commit removes those the new set lacks.
const std::vector<std::string>& result_file_names();

class ResultStaging {
 public:
  // Makes DIR/.nudge-staging.<pid> (empty); IoError when it cannot.
  explicit ResultStaging(const std::string& dir);
  ~ResultStaging();  // removes the staging folder and its files unless commit() ran
  ResultStaging(const ResultStaging&) = delete;
  ResultStaging& operator=(const ResultStaging&) = delete;

  const std::string& folder() const { return staging_; }
  // Where file `name` of the set is written (inside the staging folder).
  std::string path(const std::string& name) const { return staging_ + "/" + name; }
  // The files staged so far (regular files, no temporaries) with their sizes, by name.
  std::vector<std::pair<std::string, uint64_t>> staged_files() const;
  // Moves the staged set into the folder as described above. Every staged name must be in result_file_names();
  // summary.json, when staged, is renamed last.
  void commit();

 private:
  std::string dir_, staging_;
  bool committed_ = false;
};

// Finishes a commit that a killed job left half done (DIR/.nudge-commit present); returns whether there was one.
// IoError when the record cannot be read or a rename fails.
bool recover_commit(const std::string& dir);

// Whether `name` is a staging folder of another process than this one (a dead job's, with the lock held).
bool is_stale_staging(const std::string& name);
// Removes a folder and the plain files in it (a staging folder holds nothing else).
void remove_flat_folder(const std::string& path);

}  // namespace nudge
