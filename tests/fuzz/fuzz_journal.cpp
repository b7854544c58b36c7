// Fuzzes the row-journal reader (report/row_journal.h), which nudge merge runs on shard folders it did not write and
// --resume on a file a kill may have cut anywhere: header, block lengths, checksums and every row's fields. A reader
// must stop at a damaged tail or refuse with an InputError; anything else is a bug.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "errors.h"
#include "row_journal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/nudge_fuzz_journal." + std::to_string(::getpid());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  struct Unlink {
    ~Unlink() { std::remove(path.c_str()); }
  } unlink_after;
  try {
    nudge::RowJournalReader reader(path);
    nudge::JournalBlock block;
    long rows = 0;
    while (reader.next(block)) {
      for (const nudge::RowResult& r : block.rows)
        if (r.image == nullptr || r.probs.size() != static_cast<size_t>(reader.header().classes)) __builtin_trap();
      rows += static_cast<long>(block.rows.size());
    }
    if (rows != reader.rows_read() || rows > reader.header().rows || reader.valid_bytes() > size) __builtin_trap();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
