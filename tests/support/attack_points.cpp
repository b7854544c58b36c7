#include "attack_points.h"

#include "dataset.h"
#include "mnist.h"

namespace nudge::testing_support {

Points first_test_points(int n) {
  const Dataset test = load_dataset(mnist_dir(), "test");
  Points p;
  p.x.resize(static_cast<size_t>(n) * 784);
  p.y.resize(n);
  for (int i = 0; i < n; ++i) {
    test.image_as_float(i, p.x.data() + static_cast<size_t>(i) * 784);
    p.y[i] = test.labels[i];
  }
  return p;
}

AttackSet attack_set(const Points& p, int n, float eps, Norm norm) {
  AttackSet set;
  set.D = 784;
  set.K = 10;
  set.norm = norm;
  set.x0.assign(p.x.begin(), p.x.begin() + static_cast<size_t>(n) * 784);
  set.label.assign(p.y.begin(), p.y.begin() + n);
  set.eps.assign(n, eps);
  for (int i = 0; i < n; ++i) set.point.push_back(static_cast<uint32_t>(i));
  return set;
}

void rank_by_clean_logits(Backend& backend, AttackSet& set) {
  const int n = set.size();
  set.ranked.resize(static_cast<size_t>(n) * set.K);
  backend.logit_backprop(set.x0.data(), n, [&](int first, int m, const float* z, float*) {
    for (int i = 0; i < m; ++i)
      rank_classes(z + static_cast<size_t>(i) * set.K, set.K, set.ranked.data() + static_cast<size_t>(first + i) * set.K);
  }, nullptr);
}

std::vector<int32_t> first_targets(const AttackSet& set) {
  std::vector<int32_t> target(set.size());
  for (int e = 0; e < set.size(); ++e) target[e] = ranked_target(set, e, 0);
  return target;
}

FabRunInput fab_input(const AttackSet& set, const std::vector<int32_t>& target) {
  FabRunInput in;
  in.m = set.size();
  in.D = set.D;
  in.K = set.K;
  in.norm = set.norm;
  in.x0 = set.x0.data();
  in.label = set.label.data();
  in.target = target.data();
  in.eps = set.eps.data();
  return in;
}

}  // namespace nudge::testing_support
