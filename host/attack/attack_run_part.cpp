#include "attack_run_part.h"

#include <algorithm>

namespace nudge {

RunPart gather_run_part(const AttackSet& set, const std::vector<int>& part) {
  const size_t m = part.size(), D = static_cast<size_t>(set.D);
  RunPart p;
  p.x0.resize(m * D);
  p.eps.resize(m);
  p.label.resize(m);
  p.point.resize(m);
  for (size_t l = 0; l < m; ++l) {
    const int e = part[l];
    std::copy_n(set.x0.data() + static_cast<size_t>(e) * D, D, p.x0.data() + l * D);
    p.eps[l] = set.eps[e];
    p.label[l] = set.label[e];
    p.point[l] = set.point[e];
  }
  return p;
}

void record_run(const AttackRunResult& res, const std::vector<int>& part, AttackId id, int restart, int D,
                AttackRecord& rec) {
  for (size_t l = 0; l < part.size(); ++l) {
    if (!res.broken[l]) continue;
    const int e = part[l];
    rec.broken[e] = 1;
    rec.attack[e] = static_cast<int32_t>(id);
    rec.restart[e] = restart;
    rec.step[e] = res.step[l];
    std::copy_n(res.adv.data() + l * D, D, rec.adv.data() + static_cast<size_t>(e) * D);
  }
}

}  // namespace nudge
