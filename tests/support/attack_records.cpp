#include "attack_records.h"

#include <cmath>
#include <cstring>
#include <numeric>

#include "optimize_math.h"

namespace nudge::testing_support {

std::vector<int> all_entries(int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

int count_broken(const AttackRecord& r) {
  int n = 0;
  for (uint8_t b : r.broken) n += b;
  return n;
}

::testing::AssertionResult same_record(const AttackRecord& a, const AttackRecord& b) {
  if (a.broken.size() != b.broken.size() || a.adv.size() != b.adv.size())
    return ::testing::AssertionFailure() << "records of different sizes";
  const size_t n = a.broken.size(), D = n ? a.adv.size() / n : 0;
  for (size_t e = 0; e < n; ++e) {
    if (a.broken[e] != b.broken[e]) return ::testing::AssertionFailure() << "entry " << e << ": broken differs";
    if (a.attack[e] != b.attack[e] || a.restart[e] != b.restart[e] || a.step[e] != b.step[e])
      return ::testing::AssertionFailure() << "entry " << e << ": attack " << a.attack[e] << "/" << b.attack[e]
                                           << ", restart " << a.restart[e] << "/" << b.restart[e] << ", step "
                                           << a.step[e] << "/" << b.step[e];
    if (a.broken[e] && std::memcmp(a.adv.data() + e * D, b.adv.data() + e * D, D * sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "entry " << e << ": adversarial examples differ";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult examples_recheck(Backend& backend, const AttackSet& set, const AttackRecord& r,
                                            double slack) {
  const int n = set.size(), D = set.D, K = set.K;
  std::vector<float> probs(static_cast<size_t>(n) * K);
  backend.predict(r.adv.data(), n, probs.data());
  for (int e = 0; e < n; ++e) {
    if (!r.broken[e]) continue;
    double l2 = 0, linf = 0;
    for (int i = 0; i < D; ++i) {
      const float v = r.adv[static_cast<size_t>(e) * D + i];
      if (!(v >= 0.0f && v <= 1.0f)) return ::testing::AssertionFailure() << "entry " << e << ": pixel " << v;
      const double d = v - set.x0[static_cast<size_t>(e) * D + i];
      l2 += d * d;
      linf = std::max(linf, std::fabs(d));
    }
    const double size = set.norm == Norm::L2 ? std::sqrt(l2) : linf;
    if (size > set.eps[e] * (1 + slack))
      return ::testing::AssertionFailure() << "entry " << e << ": size " << size << " beyond eps " << set.eps[e];
    if (argmax_except(probs.data() + static_cast<size_t>(e) * K, K, -1) == set.label[e])
      return ::testing::AssertionFailure() << "entry " << e << ": classified correctly by a fresh forward pass";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace nudge::testing_support
