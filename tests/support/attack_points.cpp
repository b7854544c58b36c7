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

}  // namespace nudge::testing_support
