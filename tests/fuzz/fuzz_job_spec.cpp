// Fuzzes the optimize job spec as the CLI builds it: the input is split at NUL or newline bytes into arguments for
// "nudge optimize", CLI11 parses them with the real command's options, and the job it builds is validated (for a
// 10-class model) and expanded into targets, without touching files or a backend. A parse error or an InputError is
// the expected answer to nonsense; anything else (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "commands.h"
#include "errors.h"
#include "job_runner.h"
#include "backend.h"
#include "json_text.h"

namespace {

void validate(const nudge::cli::JobRun& run) {
  nudge::validate_job(run.job, 10);
  const int label = run.job.init == nudge::InitKind::Test || run.job.init == nudge::InitKind::Train ? 3 : -1;
  for (long source = 0; source < 3; ++source)
    for (const nudge::RowTarget& t : nudge::targets_for(run.job, source, label, 10))
      if (t.kind == nudge::TargetKind::OneHot && (t.cls < 0 || t.cls >= 10)) __builtin_trap();
  nudge::json_text(run.spec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"nudge", "optimize"};
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c == '\0' || c == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) args.push_back(cur);
  if (args.size() > 64) return 0;
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  CLI::App app{"fuzz"};
  app.require_subcommand(1);
  const nudge::cli::Runner runner = nudge::cli::add_optimize_command(app, validate);
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::Error&) {
    return 0;
  }
  try {
    runner();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
