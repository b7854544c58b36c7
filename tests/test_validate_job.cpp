// validate_job refuses each malformed optimize job with a message naming the rule: soft targets of the wrong size,
// negative or not summing to 1, Carlini-Wagner with a soft target, a class and a distribution both given, negative
// or NaN eps, classes out of range or not numbers, label-dependent targets without labels, no target at all.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine_rows.h"
#include "errors.h"
#include "optimize_engine.h"
#include "optimize_job.h"

namespace nudge {
namespace {

using testing_support::kK;
using testing_support::noise_job;

// ---- validation ---------------------------------------------------------------------------------------------------

void expect_invalid(const OptimizeJob& job, const std::string& needle) {
  try {
    validate_job(job, kK);
    ADD_FAILURE() << "validate_job accepted a job that should fail with '" << needle << "'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

TEST(ValidateJob, RejectsEachBadJob) {
  OptimizeJob ok = noise_job(3, 5);
  EXPECT_NO_THROW(validate_job(ok, kK));

  OptimizeJob soft = ok;
  soft.target = "";
  soft.target_dist = std::vector<float>(9, 1.0f / 9);
  expect_invalid(soft, "has 9 entries");
  soft.target_dist = {0.6f, 0.5f, -0.1f, 0, 0, 0, 0, 0, 0, 0};
  expect_invalid(soft, "entry 2 is negative");
  soft.target_dist = {0.5f, 0.4f, 0, 0, 0, 0, 0, 0, 0, 0};
  expect_invalid(soft, "must sum to 1");
  soft.target_dist = {0.5f, 0.5f, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_NO_THROW(validate_job(soft, kK));
  soft.step.loss = LossKind::CarliniWagner;
  expect_invalid(soft, "--loss cw needs a one-hot or untargeted target");

  OptimizeJob both = ok;
  both.target_dist = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  expect_invalid(both, "not both");

  OptimizeJob eps = ok;
  eps.step.norm = Norm::Linf;
  eps.eps = {0.1f, -0.1f};
  expect_invalid(eps, "--eps must be >= 0");
  eps.eps = {NAN};
  expect_invalid(eps, "--eps must be >= 0");

  OptimizeJob cls = ok;
  cls.target = "12";
  expect_invalid(cls, "the model has 10 classes");
  cls.target = "-1";
  expect_invalid(cls, "the model has 10 classes");
  cls.target = "3x";
  expect_invalid(cls, "expected a class number");

  for (const char* t : {"next", "other", "untargeted"}) {
    OptimizeJob unlabelled = ok;
    unlabelled.target = t;
    expect_invalid(unlabelled, "needs true labels");
    unlabelled.init = InitKind::Test;
    EXPECT_NO_THROW(validate_job(unlabelled, kK)) << t;
  }

  OptimizeJob none = ok;
  none.target = "";
  expect_invalid(none, "no target");
}

}  // namespace
}  // namespace nudge
