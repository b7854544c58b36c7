// Adversarial training: TRADES' loss gradients against central differences, the in-training PGD attack against
// `nudge optimize`'s engine on the same batch and seed, the schedules, the guard on a constructed collapse, a short
// adversarial run that learns, and the recipe's round trip through the model file and `nudge eval`.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "adversarial.h"
#include "cli_sandbox.h"
#include "cpu_backend.h"
#include "dataset.h"
#include "delegating_backend.h"
#include "mnist.h"
#include "model.h"
#include "optimize_engine.h"
#include "start_images.h"
#include "train.h"
#include "train_schedule.h"
#include "optimize_math.h"

namespace nudge {
namespace {

const std::string kMnist = testing_support::mnist_dir();
const std::string kModel = NUDGE_SOURCE_DIR "/data/models/mnist_cnn.safetensors";

// TRADES' loss computed directly from its definition in long double: an oracle independent of the closed-form
// gradient in optimize_math.h.
long double trades_reference(const std::vector<long double>& z, const std::vector<long double>& za, int y, double beta) {
  const int K = static_cast<int>(z.size());
  auto log_softmax = [K](const std::vector<long double>& v) {
    long double m = v[0], s = 0;
    for (long double e : v) m = std::max(m, e);
    for (long double e : v) s += std::exp(e - m);
    std::vector<long double> out(K);
    for (int j = 0; j < K; ++j) out[j] = v[j] - m - std::log(s);
    return out;
  };
  const auto lp = log_softmax(z), lq = log_softmax(za);
  long double kl = 0;
  for (int j = 0; j < K; ++j) kl += std::exp(lp[j]) * (lp[j] - lq[j]);
  return -lp[y] + static_cast<long double>(beta) * kl;
}

TEST(TradesLoss, GradientsMatchCentralDifferences) {
  std::mt19937 rng(20261202);
  std::normal_distribution<float> logit(0.0f, 3.0f);
  const int K = 10;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> z(K), za(K), dz(K), dza(K);
    for (int j = 0; j < K; ++j) {
      z[j] = logit(rng);
      za[j] = z[j] + 0.5f * logit(rng);
    }
    const int y = trial % K;
    const float beta = trial % 2 ? 6.0f : 1.0f;
    const TradesTerms t = trades_loss_one(z.data(), za.data(), K, y, beta, 1.0f, dz.data(), dza.data());
    std::vector<long double> zl(z.begin(), z.end()), zal(za.begin(), za.end());
    // The shared log-sum-exp (optimize_math.h) subtracts the maximum in float, so each exponent z_j - m carries up to
    // 2^-24 |z_j - m| of rounding: the CE term inherits that of one log-sum-exp, the KL term that of two.
    const auto spread = [](const std::vector<float>& v) {
      return *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
    };
    const double value_tol = 1e-12 + (1 + 2 * beta) * std::ldexp(1.0, -24) * std::max(spread(z), spread(za));
    EXPECT_NEAR(static_cast<double>(trades_reference(zl, zal, y, beta)), t.ce + beta * t.kl, value_tol);
    // h = 1e-4 in long double: truncation error ~h^2 * |f'''| ~ 1e-8, far below the float rounding (~1e-7 relative)
    // of the analytic gradient, which sets the tolerance.
    const long double h = 1e-4L;
    for (int side = 0; side < 2; ++side) {
      std::vector<long double>& v = side ? zal : zl;
      const std::vector<float>& g = side ? dza : dz;
      for (int j = 0; j < K; ++j) {
        const long double keep = v[j];
        v[j] = keep + h;
        const long double up = trades_reference(zl, zal, y, beta);
        v[j] = keep - h;
        const long double down = trades_reference(zl, zal, y, beta);
        v[j] = keep;
        const double numeric = static_cast<double>((up - down) / (2 * h));
        EXPECT_NEAR(g[j], numeric, 1e-6 + 1e-5 * std::fabs(numeric))
            << "trial " << trial << (side ? " dza[" : " dz[") << j << "]";
      }
    }
  }
}

TEST(TradesLoss, ScaleAndExtremeLogits) {
  const int K = 10;
  std::vector<float> z(K, 0.0f), za(K, 0.0f), dz(K), dza(K), dz2(K), dza2(K);
  z[3] = 1e4f;
  za[5] = 1e4f;
  const TradesTerms t = trades_loss_one(z.data(), za.data(), K, 3, 6.0f, 1.0f, dz.data(), dza.data());
  EXPECT_TRUE(std::isfinite(t.ce) && std::isfinite(t.kl));
  EXPECT_NEAR(t.kl, 1e4, 1.0);  // log p_3 - log q_3 = 0 - (-1e4)
  trades_loss_one(z.data(), za.data(), K, 3, 6.0f, 0.25f, dz2.data(), dza2.data());
  for (int j = 0; j < K; ++j) {
    EXPECT_TRUE(std::isfinite(dz[j]) && std::isfinite(dza[j]));
    EXPECT_FLOAT_EQ(dz2[j], 0.25f * dz[j]);
    EXPECT_FLOAT_EQ(dza2[j], 0.25f * dza[j]);
  }
}

TEST(TrainSchedule, CyclicStepAndRamp) {
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Constant, 0.01f, 3.3, 10), 0.01f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Cyclic, 0.01f, 0.0, 10), 0.0f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Cyclic, 0.01f, 4.0, 10), 0.01f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Cyclic, 0.01f, 2.0, 10), 0.005f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Cyclic, 0.01f, 7.0, 10), 0.005f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Cyclic, 0.01f, 10.0, 10), 0.0f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Step, 0.01f, 4.9, 10), 0.01f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Step, 0.01f, 5.0, 10), 0.001f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedule::Step, 0.01f, 8.0, 10), 0.0001f);
  EXPECT_FLOAT_EQ(eps_at(0.3f, 0.5, 2.0), 0.075f);
  EXPECT_FLOAT_EQ(eps_at(0.3f, 5.0, 2.0), 0.3f);
  EXPECT_FLOAT_EQ(eps_at(0.3f, 0.1, 0.0), 0.3f);
}

TEST(Guard, DetectsAConstructedCollapseAndNamesTheBestEpoch) {
  GuardVerdict v = guard_verdict({0.50, 0.70, 0.75, 0.10}, 0.2);
  EXPECT_TRUE(v.collapsed);
  EXPECT_EQ(v.best_epoch, 2);
  v = guard_verdict({0.50, 0.70, 0.60}, 0.2);  // a dip smaller than the drop is noise, not a collapse
  EXPECT_FALSE(v.collapsed);
  EXPECT_EQ(v.best_epoch, 1);
  v = guard_verdict({0.50, 0.70, 0.80}, 0.2);  // improving: the last epoch is the best
  EXPECT_FALSE(v.collapsed);
  EXPECT_EQ(v.best_epoch, 2);
  v = guard_verdict({0.30}, 0.2);
  EXPECT_FALSE(v.collapsed);
  EXPECT_EQ(v.best_epoch, 0);
}

// Overfitting to the training attack with no robust epoch to fall from (what Fast-AT at eps 0.4 does on this
// machine, docs/adversarial-training.md): the FGSM accuracy of the epoch's batches far above the held-out robust
// accuracy, from the second epoch on.
TEST(Guard, DetectsOverfittingToTheTrainingAttackWithoutARobustEpoch) {
  GuardVerdict v = guard_verdict({0.0, 0.0}, 0.2, {0.19, 0.61}, 0.5);
  EXPECT_TRUE(v.collapsed);
  EXPECT_TRUE(v.overfit);
  EXPECT_EQ(v.best_epoch, 0);  // the last epoch is never the one kept when it overfitted
  v = guard_verdict({0.0}, 0.2, {0.9}, 0.5);  // the first epoch only learns: no verdict yet
  EXPECT_FALSE(v.collapsed);
  v = guard_verdict({0.80, 0.86}, 0.2, {0.90, 0.965}, 0.5);  // healthy Fast-AT at eps 0.3: a gap of ~10 points
  EXPECT_FALSE(v.collapsed);
  EXPECT_EQ(v.best_epoch, 1);
  v = guard_verdict({0.10, 0.20}, 0.2, {0.60, 0.71}, 0.5);  // a gap just over the bound
  EXPECT_TRUE(v.overfit);
  v = guard_verdict({0.10, 0.20}, 0.2, {0.60, 0.69}, 0.5);  // and just under
  EXPECT_FALSE(v.collapsed);
  v = guard_verdict({0.0, 0.0}, 0.2, {0.19, 0.61}, 1.0);  // --overfit-gap 1 turns the rule off
  EXPECT_FALSE(v.collapsed);
  v = guard_verdict({0.0, 0.0}, 0.2, {}, 0.5);  // no attack accuracies given: the fall rule alone
  EXPECT_FALSE(v.collapsed);
}

// A backend whose model is wiped (all weights zero) after `after` train steps: the robust accuracy that follows
// collapses as catastrophic overfitting's does, and the guard must notice, stop, and hand back the best epoch.
class WipingBackend : public testing_support::DelegatingBackend {
 public:
  WipingBackend(std::unique_ptr<Backend> inner, int after) : DelegatingBackend(std::move(inner)), after_(after) {}
  TrainStepResult train_step(const float* x, const int32_t* y, int n, const AdamConfig& a) override {
    const TrainStepResult r = DelegatingBackend::train_step(x, y, n, a);
    if (++steps_ == after_) {
      Model m;
      store_model(m);
      for (Tensor& t : m.params) std::fill(t.data.begin(), t.data.end(), 0.0f);
      load_model(m);
    }
    return r;
  }

 private:
  int after_, steps_ = 0;
};

class GuardCheck : public ::testing::TestWithParam<bool> {};

TEST_P(GuardCheck, StopsTrainingAndKeepsTheBestEpochWhenRobustAccuracyCollapses) {
  REQUIRE_MNIST();
  const Dataset train = load_dataset(kMnist, "train");
  Model model = Model::load(kModel);
  TrainOptions opt;
  opt.epochs = 4;
  opt.batch = 100;
  opt.limit = 200;         // two batches an epoch
  opt.adam.lr = 1e-9f;     // the model barely moves: what changes the check is the wipe
  opt.progress = false;
  opt.adv.method = AdvMethod::Fgsm;
  opt.adv.eps = 0.02f;     // the plain reference model is mostly robust at this radius
  opt.adv.step_size = 0.025f;
  opt.adv.check_count = 100;
  opt.adv.check_steps = 5;
  opt.adv.check_apgd = GetParam();
  WipingBackend backend(make_cpu_backend(), 3);  // wiped during epoch 2
  TrainSummary sum;
  train_model(backend, model, train, opt, &sum);
  ASSERT_EQ(sum.epochs.size(), 2u) << "training should stop after the collapsed epoch";
  EXPECT_TRUE(sum.collapsed);
  EXPECT_EQ(sum.kept_epoch, 1);
  EXPECT_GT(sum.epochs[0].check_robust, 0.8);
  EXPECT_LT(sum.epochs[1].check_robust, 0.2);
  EXPECT_NE(sum.guard_message.find("catastrophic overfitting"), std::string::npos) << sum.guard_message;
  // The returned model is epoch 1's, not the wiped one: it still classifies.
  bool nonzero = false;
  for (const Tensor& t : model.params)
    for (float v : t.data) nonzero |= v != 0.0f;
  EXPECT_TRUE(nonzero);
}

INSTANTIATE_TEST_SUITE_P(PgdAndApgd, GuardCheck, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? std::string("ApgdCe") : std::string("Pgd"); });

TEST(RobustCheck, ApgdIsAtLeastAsStrongAsPgdOnThePlainModel) {
  REQUIRE_MNIST();
  const Dataset test = load_dataset(kMnist, "test");
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  const int n = 60, D = 784, K = 10;
  std::vector<float> x(static_cast<size_t>(n) * D);
  std::vector<int32_t> y(n);
  for (int i = 0; i < n; ++i) {
    test.image_as_float(i, x.data() + static_cast<size_t>(i) * D);
    y[i] = test.labels[i];
  }
  const RobustCheck pgd = pgd_robust_check(*backend, x.data(), y.data(), n, D, K, 0.08f, 20, 2.5f * 0.08f / 20, 1, 5);
  const RobustCheck apgd = apgd_robust_check(*backend, x.data(), y.data(), n, D, K, 0.08f, 20, 1, 5);
  EXPECT_EQ(pgd.clean_correct, apgd.clean_correct);
  EXPECT_LE(apgd.robust, pgd.robust);
  EXPECT_LT(apgd.robust, apgd.clean_correct) << "eps 0.08 should break some of the plain model's points";
}

// Collects the reported images of an optimize job.
class ImageSink : public RowSink {
 public:
  explicit ImageSink(int D) : D_(D) {}
  void row(const RowResult& r) override { images.insert(images.end(), r.image, r.image + D_); }
  std::vector<float> images;

 private:
  int D_;
};

TEST(TrainingAttack, PgdEqualsNudgeOptimizeOnTheSameBatchAndSeed) {
  REQUIRE_MNIST();
  const Dataset train = load_dataset(kMnist, "train");
  const Model model = Model::load(kModel);
  auto backend = make_cpu_backend();
  backend->load_model(model);
  const int n = 24, D = 784, K = 10;
  const std::vector<int> idx = epoch_order(train.count, 7, 1);
  std::vector<float> x(static_cast<size_t>(n) * D), adv(x.size());
  std::vector<int32_t> y(n);
  for (int i = 0; i < n; ++i) {
    train.image_as_float(idx[i], x.data() + static_cast<size_t>(i) * D);
    y[i] = train.labels[idx[i]];
  }
  AdversarialConfig cfg;
  cfg.method = AdvMethod::Pgd;
  cfg.steps = 7;
  cfg.step_size = 0.04f;
  const uint64_t seed = training_attack_seed(7, 0, 3);
  AttackScratch scratch;
  attack_training_batch(*backend, cfg, 0.3f, x.data(), y.data(), n, D, K, seed, adv.data(), scratch);

  OptimizeJob job;
  job.init = InitKind::Train;
  job.indices.assign(idx.begin(), idx.begin() + n);
  job.target = "untargeted";
  job.step = training_attack_step_config(0.04f);
  job.steps = 7;
  job.eps = {0.3f};
  job.random_start = true;
  job.seed = seed;
  job.chunk = 5;  // chunking must not matter either
  StartImages starts(job, &train, 28, 28);
  ImageSink sink(D);
  run_optimize(*backend, model, job, starts, sink, false);
  ASSERT_EQ(sink.images.size(), adv.size());
  EXPECT_EQ(0, std::memcmp(sink.images.data(), adv.data(), adv.size() * sizeof(float)))
      << "the training attack and `nudge optimize` disagree";
  // And the attack did something within the rules: inside the ball and [0,1], and stronger than the clean image.
  int moved = 0;
  for (size_t p = 0; p < adv.size(); ++p) {
    ASSERT_LE(std::fabs(adv[p] - x[p]), 0.3f + 1e-6f);
    ASSERT_TRUE(adv[p] >= 0.0f && adv[p] <= 1.0f);
    moved += adv[p] != x[p];
  }
  EXPECT_GT(moved, n * D / 4);
}

TEST(TrainingAttack, TradesRaisesTheKlAndStaysInTheBall) {
  REQUIRE_MNIST();
  const Dataset test = load_dataset(kMnist, "test");
  auto backend = make_cpu_backend();
  backend->load_model(Model::load(kModel));
  const int n = 16, D = 784, K = 10;
  std::vector<float> x(static_cast<size_t>(n) * D), adv(x.size()), pc(static_cast<size_t>(n) * K),
      pa(pc.size());
  std::vector<int32_t> y(n);
  for (int i = 0; i < n; ++i) {
    test.image_as_float(i, x.data() + static_cast<size_t>(i) * D);
    y[i] = test.labels[i];
  }
  AdversarialConfig cfg;
  cfg.method = AdvMethod::Trades;
  cfg.steps = 10;
  cfg.step_size = 0.03f;
  AttackScratch scratch;
  attack_training_batch(*backend, cfg, 0.3f, x.data(), y.data(), n, D, K, 99, adv.data(), scratch);
  backend->predict(x.data(), n, pc.data());
  backend->predict(adv.data(), n, pa.data());
  double kl = 0;
  for (size_t j = 0; j < pc.size(); ++j) kl += pc[j] * (std::log(pc[j] + 1e-30) - std::log(pa[j] + 1e-30));
  EXPECT_GT(kl / n, 1.0) << "ten steps of 0.03 at eps 0.3 should move a plain model's prediction far";
  for (size_t p = 0; p < adv.size(); ++p) {
    ASSERT_LE(std::fabs(adv[p] - x[p]), 0.3f + 1e-6f);
    ASSERT_TRUE(adv[p] >= 0.0f && adv[p] <= 1.0f);
  }
}

TEST(AdversarialTraining, AShortPgdRunRaisesHeldOutRobustAccuracy) {
  REQUIRE_MNIST();
  const Dataset train = load_dataset(kMnist, "train");
  const Architecture arch = Architecture::reference();
  Model model = Model::glorot(arch, 3);
  TrainOptions opt;
  opt.epochs = 2;
  opt.batch = 50;
  opt.limit = 2000;
  opt.adam.lr = 2e-3f;
  opt.progress = false;
  opt.adv.method = AdvMethod::Pgd;
  opt.adv.eps = 0.1f;
  opt.adv.steps = 5;
  opt.adv.step_size = 0.03f;
  opt.adv.check_count = 200;
  opt.adv.check_steps = 10;
  auto backend = make_cpu_backend();
  TrainSummary sum;
  train_model(*backend, model, train, opt, &sum);
  ASSERT_EQ(sum.epochs.size(), 2u);
  // An untrained network is right on ~10% of images and robust on fewer.
  EXPECT_GT(sum.epochs.back().check_robust, 0.4) << "held-out PGD robust accuracy after 2 epochs";
  EXPECT_GT(sum.epochs.back().check_clean, 0.7);
  EXPECT_EQ(sum.epochs.back().attack_image_steps, 2000L * 5);
}

TEST(AdversarialTrainingCli, RecipeRoundTripsThroughTheModelFileAndEval) {
  REQUIRE_MNIST();
  testing_support::CliSandbox sb("nudge_advtrain_");
  const auto r = sb.run({"train", "--data", kMnist, "--device", "cpu", "--arch", "1x28x28:conv4k3,relu,pool2,flatten,dense10",
                         "--adversarial", "fgsm", "--eps", "0.2", "--limit", "300", "--batch", "100", "--epochs", "2",
                         "--check-count", "100", "--check-steps", "3", "--check-attack", "apgd-ce", "--lr-schedule", "cyclic",
                         "--out", "m.safetensors"});
  ASSERT_EQ(r.code, 0) << r.err;
  const Model m = Model::load(sb.path("m.safetensors"));
  ASSERT_TRUE(m.metadata.count("nudge.recipe"));
  const auto recipe = nlohmann::json::parse(m.metadata.at("nudge.recipe"));
  EXPECT_EQ(recipe["method"], "fgsm");
  EXPECT_FLOAT_EQ(recipe["eps"].get<float>(), 0.2f);
  EXPECT_EQ(recipe["attack_steps"], 1);
  EXPECT_FLOAT_EQ(recipe["attack_step_size"].get<float>(), 1.25f * 0.2f);
  EXPECT_EQ(recipe["lr_schedule"], "cyclic");
  EXPECT_EQ(recipe["held_out_check"]["images"], 100);
  EXPECT_EQ(recipe["held_out_check"]["attack"], "apgd-ce");
  const auto log = nlohmann::json::parse(testing_support::slurp(sb.path("m.train.json")));
  ASSERT_EQ(log["epochs"].size(), 2u);
  EXPECT_TRUE(log["epochs"][1].contains("check_robust_accuracy"));
  const auto ev = sb.run({"eval", "--data", kMnist, "--device", "cpu", "--model", "m.safetensors", "--limit", "50", "--json"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  EXPECT_EQ(nlohmann::json::parse(ev.out)["recipe"]["method"], "fgsm");
  // Flags of adversarial training without --adversarial are refused, not ignored.
  const auto bad = sb.run({"train", "--data", kMnist, "--device", "cpu", "--eps", "0.2", "--out", "x.safetensors"});
  EXPECT_EQ(bad.code, 2) << bad.err;
}

}  // namespace
}  // namespace nudge
