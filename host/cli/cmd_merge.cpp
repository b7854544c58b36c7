// nudge merge: joins the folders of `nudge optimize --shard K/N` runs into one folder, byte-identical to the
// unsharded run's: the shards' journals (rows.nudge) are replayed in row order through the same report. Refuses
// missing, duplicated, unfinished or mismatched shards, naming them.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "atomic_file.h"
#include "commands.h"
#include "errors.h"
#include "job_journal.h"
#include "json_text.h"
#include "optimize_report.h"
#include "output_lock.h"
#include "result_commit.h"
#include "row_journal.h"

namespace nudge::cli {

namespace {

struct Shard {
  std::string dir;
  nlohmann::json summary;
  std::unique_ptr<RowJournalReader> rows;
};

Shard open_shard(const std::string& dir) {
  Shard s;
  s.dir = dir;
  const std::string summary_path = dir + "/summary.json";
  struct stat st;
  if (::stat(summary_path.c_str(), &st) != 0)
    throw InputError(dir + " is not a finished shard (it has no summary.json; resume it with --resume)");
  s.summary = nlohmann::json::parse(read_file(summary_path, 64 << 20), nullptr, false);
  if (!s.summary.is_object() || !s.summary.contains("job") || !s.summary["job"].is_object() ||
      !s.summary["job"].contains("shard") || !s.summary.contains("entries_per_row") ||
      !s.summary["entries_per_row"].is_number_integer())
    throw InputError(dir + "/summary.json is not the summary of a nudge optimize --shard run");
  s.rows = std::make_unique<RowJournalReader>(dir + "/rows.nudge");
  const JournalHeader& h = s.rows->header();
  if (h.job != s.summary["job"])
    throw InputError(dir + ": rows.nudge and summary.json describe different jobs (" +
                     spec_differences(h.job, s.summary["job"]) + ")");
  if (h.parts < 2) throw InputError(dir + " holds a whole job, not a shard: there is nothing to merge");
  return s;
}

}  // namespace

Runner add_merge_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge", "join the folders of optimize --shard K/N runs into one folder");
  auto shards = std::make_shared<std::vector<std::string>>();
  auto out = std::make_shared<std::string>();
  cmd->add_option("shards", *shards, "the shard folders, in any order")->required();
  cmd->add_option("--out", *out, "the merged folder (results.csv, summary.json, images.npy, grid.png)")->required();
  return [=]() {
    std::vector<Shard> parts;
    for (const std::string& dir : *shards) {
      std::error_code ec;
      if (std::filesystem::equivalent(dir, *out, ec)) throw InputError("--out " + *out + " is one of the shards (" + dir + ")");
      parts.push_back(open_shard(dir));
    }
    const JournalHeader& first = parts.front().rows->header();
    nlohmann::json job = parts.front().summary["job"];
    job.erase("shard");
    std::vector<const Shard*> by_part(first.parts, nullptr);
    for (const Shard& s : parts) {
      const JournalHeader& h = s.rows->header();
      nlohmann::json j = s.summary["job"];
      j.erase("shard");
      if (h.parts != first.parts)
        throw InputError(s.dir + " is shard " + std::to_string(h.part) + "/" + std::to_string(h.parts) + " but " +
                         parts.front().dir + " is shard " + std::to_string(first.part) + "/" + std::to_string(first.parts));
      const std::string diff = spec_differences(job, j);
      if (!diff.empty() || h.total_rows != first.total_rows)
        throw InputError(s.dir + " is a shard of another job than " + parts.front().dir + " (" +
                         (diff.empty() ? "row count" : diff) + ")");
      if (by_part[h.part])
        throw InputError("shard " + std::to_string(h.part) + "/" + std::to_string(h.parts) + " is given twice: " +
                         by_part[h.part]->dir + " and " + s.dir);
      const PartRange range = part_range(h.total_rows, h.part, h.parts);
      if (h.first_row != range.first || h.rows != range.end - range.first)
        throw InputError(s.dir + "/rows.nudge holds rows that are not those of shard " + std::to_string(h.part) + "/" +
                         std::to_string(h.parts));
      by_part[h.part] = &s;
    }
    std::string missing;
    for (int k = 0; k < first.parts; ++k)
      if (!by_part[k]) missing += (missing.empty() ? "" : ", ") + std::to_string(k) + "/" + std::to_string(first.parts);
    if (!missing.empty()) throw InputError("missing shard" + std::string(missing.find(',') == std::string::npos ? " " : "s ") + missing);

    CreatedFolders made(ensure_output_dir(*out));
    const OutputLock lock(*out, command_line());
    ResultStaging staging(*out);
    OptimizeReport report(staging.folder(), first.total_rows, first.classes, first.height, first.width, first.steps,
                          first.target_dist, first.judge);
    long image_steps = 0;
    nlohmann::json sources = nlohmann::json::array();
    for (const Shard* s : by_part) {
      JournalBlock block;
      while (s->rows->next(block)) report.rows(block.rows, block.image_steps);
      if (s->rows->damaged_tail() || s->rows->rows_read() != s->rows->header().rows)
        throw InputError(s->dir + "/rows.nudge holds " + std::to_string(s->rows->rows_read()) + " whole rows of its " +
                         std::to_string(s->rows->header().rows) + ": the shard is damaged; run it again");
      image_steps += s->rows->image_steps_read();
      sources.push_back(s->dir);
    }
    nlohmann::json summary = report.finish(job, image_steps, parts.front().summary["entries_per_row"].get<int>());
    nlohmann::json files = nlohmann::json::object();
    for (const auto& [name, bytes] : staging.staged_files()) files[name] = bytes;
    summary["files"] = files;
    write_file_atomically(staging.path("run.json"),
                          json_text(nlohmann::json{{"merged_from", sources}, {"command", command_line()}}, 2) + "\n");
    write_file_atomically(staging.path("summary.json"), json_text(summary, 2) + "\n");
    staging.commit();
    made.keep();
    std::printf("merged %d shards, %ld rows: success %.2f%%; results in %s\n", first.parts, first.total_rows,
                100.0 * summary["success_rate"].get<double>(), out->c_str());
    return 0;
  };
}

}  // namespace nudge::cli
