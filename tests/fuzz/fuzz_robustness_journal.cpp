// Fuzzes the robustness-journal reader (report/robustness_journal.h), which --resume runs on a file a kill may have
// cut anywhere: header, block framing, checksums, every point's classes, flags, distances and pixels, and the stage
// counts. A reader must stop at a damaged tail or refuse with an InputError; anything else is a bug.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "errors.h"
#include "robustness_journal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/nudge_fuzz_robustness_journal." + std::to_string(::getpid());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  struct Unlink {
    ~Unlink() { std::remove(path.c_str()); }
  } unlink_after;
  try {
    nudge::RobustnessJournalReader reader(path);
    const nudge::RobustnessJournalHeader& h = reader.header();
    std::vector<nudge::AttackId> attacks;
    for (uint32_t a : h.attacks) attacks.push_back(static_cast<nudge::AttackId>(a));
    // The part's whole result only where the header's sizes are modest (they are the file's claim, not its bytes).
    const bool whole_fits = static_cast<double>(h.points) * h.eps * h.pixels <= double(1 << 22);
    nudge::RobustnessResult whole =
        nudge::empty_robustness_result(whole_fits ? static_cast<int>(h.points) : 0, h.eps, h.pixels, h.classes, attacks);
    nudge::RobustnessResult slice;
    long first = 0, points = 0;
    while (reader.next(slice, &first)) {
      // Whatever the reader accepts must fit the part it claims to belong to.
      if (whole_fits) nudge::place_slice(whole, h.first_point, slice, first);
      points += slice.points;
    }
    if (points != reader.points_read() || points > h.points || reader.valid_bytes() > size) __builtin_trap();
  } catch (const nudge::InputError&) {
  }
  return 0;
}
