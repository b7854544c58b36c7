// Training end to end on the CPU backend (a short MNIST run must clearly learn), its determinism, the epoch
// shuffle, Glorot initialisation, and the model file: save/load round trip, misfit tensors, PyTorch exports.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "cpu_backend.h"
#include "cpu_network.h"
#include "dataset.h"
#include "errors.h"
#include "evaluate.h"
#include "optimize_math.h"
#include "mnist.h"
#include "model.h"
#include "reference_math.h"
#include "safetensors.h"
#include "temp_dir.h"
#include "train.h"

namespace nudge {
namespace {

using testing_support::have_mnist;

const std::string kMnistDir = testing_support::mnist_dir();

// Bit-for-bit equality of two models' parameters (so -0.0 vs 0.0 or a NaN payload would show).
void expect_same_params(const Model& a, const Model& b, const std::string& what) {
  ASSERT_EQ(a.params.size(), b.params.size()) << what;
  const auto specs = a.arch.params();
  for (size_t i = 0; i < a.params.size(); ++i) {
    EXPECT_EQ(a.params[i].shape, b.params[i].shape) << what << ": " << specs[i].name;
    ASSERT_EQ(a.params[i].size(), b.params[i].size()) << what << ": " << specs[i].name;
    EXPECT_EQ(0, std::memcmp(a.params[i].ptr(), b.params[i].ptr(), a.params[i].size() * sizeof(float)))
        << what << ": " << specs[i].name << " differs";
  }
}

// A private directory under the GoogleTest temp dir, removed afterwards.
struct TempDir : testing_support::TempDir {
  TempDir() : testing_support::TempDir("nudge_training_") {}
};

// ---- training -------------------------------------------------------------------------------------------------

// One epoch over the first 3000 training images must take the reference model from chance to well above 85% on the
// first 2000 test images. Measured (seed 1): 88.75% with batch 16 and lr 2e-3 (188 Adam steps); seeds 2-4 give
// 91.9-92.6%. The defaults (batch 32, lr 1e-3: 94 steps) give only 83.4% for seed 1 and 84.8-86.9% for seeds 2-4,
// too close to the bar, so the test takes the smaller batch and larger step. About 2 s on 2 cores.
TEST(Training, ShortMnistRunLearns) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not fetched: run data/fetch_mnist.sh";
  const Dataset train = load_dataset(kMnistDir, "train");
  const Dataset test = load_dataset(kMnistDir, "test");
  auto backend = make_cpu_backend();
  Model model = Model::glorot(Architecture::reference(), 1);
  TrainOptions opt;
  opt.epochs = 1;
  opt.limit = 3000;
  opt.batch = 16;
  opt.adam.lr = 2e-3f;
  opt.seed = 1;
  opt.progress = false;
  const std::vector<EpochStats> stats = train_model(*backend, model, train, opt);
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_TRUE(std::isfinite(stats[0].loss));
  const EvalResult r = evaluate_model(*backend, test, 10, 2000, false);
  EXPECT_EQ(r.count, 2000);
  std::printf("[training] 1 epoch on 3000 images: train loss %.4f, train accuracy %.2f%%, test accuracy %.2f%% "
              "(%s)\n", stats[0].loss, 100 * stats[0].accuracy, 100 * r.accuracy(), backend->name().c_str());
  EXPECT_GE(r.accuracy(), 0.85) << "the reference model did not learn from 3000 images";
  // The model handed back holds the trained weights: a fresh backend loaded from it agrees.
  auto again = make_cpu_backend();
  again->load_model(model);
  EXPECT_EQ(evaluate_model(*again, test, 10, 2000, false).correct, r.correct);
}

// One train_step is one Adam step on the batch-mean cross-entropy gradient, whichever thread computed which slice.
// On the first step mhat = g and vhat = g^2, so each parameter moves by -lr * g / (|g| + eps). A large Adam eps
// (1e-3) keeps that well conditioned where g is near zero, so the float rounding of the gradient sum (different
// slicing than the single-network reference) cannot flip a near-zero step. Measured max deviation 1.5e-8 (the
// rounding of the updated float parameter itself) against steps of up to lr = 1e-3; bound 1e-7 + 1e-4 |step|.
TEST(Training, TrainStepIsOneAdamStepOnTheMeanGradient) {
  const Architecture arch = Architecture::parse("1x12x12:conv4k3,relu,pool2,flatten,dense16,relu,dense10");
  const Model m = ref::random_model(arch, 10050);
  const int n = 7, D = arch.input.size(), K = arch.num_classes();
  const auto x = ref::random_uniform(static_cast<size_t>(n) * D, 0, 1, 10051);
  std::vector<int32_t> labels;
  for (int i = 0; i < n; ++i) labels.push_back((i * 3) % K);

  // The reference: one network over the whole batch, dlogits = (p - onehot) / n.
  CpuNetwork net(arch);
  net.forward(ref::param_ptrs(m), x.data(), n);
  std::vector<float> dlogits(static_cast<size_t>(n) * K), probs(K), onehot(K);
  double loss_sum = 0;
  int correct = 0;
  const auto ref_logits = ref::network_forward(arch, ref::params_to_double(m), ref::to_double(x), n);
  for (int i = 0; i < n; ++i) {
    std::fill(onehot.begin(), onehot.end(), 0.0f);
    onehot[labels[i]] = 1.0f;
    loss_forward_backward_one(net.logits() + i * K, K, onehot.data(), TargetKind::OneHot, labels[i],
                              LossKind::CrossEntropy, 0, probs.data(), dlogits.data() + i * K);
    for (int j = 0; j < K; ++j) dlogits[i * K + j] /= n;
    const double* z = ref_logits.data() + static_cast<size_t>(i) * K;
    loss_sum += ref::loss_one(z, K, ref::to_double(onehot).data(), TargetKind::OneHot, labels[i],
                              LossKind::CrossEntropy, 0);
    correct += static_cast<int>(std::max_element(z, z + K) - z) == labels[i];
  }
  std::vector<std::vector<float>> grads;
  std::vector<float*> gp;
  for (const Tensor& t : m.params) grads.emplace_back(t.size());
  for (auto& g : grads) gp.push_back(g.data());
  net.backward(ref::param_ptrs(m), dlogits.data(), n, &gp, nullptr);

  auto backend = make_cpu_backend();
  backend->load_model(m);
  AdamConfig adam;
  adam.lr = 1e-3f;
  adam.eps = 1e-3f;
  const TrainStepResult r = backend->train_step(x.data(), labels.data(), n, adam);
  EXPECT_NEAR(r.loss_sum, loss_sum, 1e-5 * loss_sum);
  EXPECT_EQ(r.correct, correct);
  Model after;
  backend->store_model(after);
  const auto specs = arch.params();
  for (size_t p = 0; p < specs.size(); ++p) {
    std::vector<double> expect(m.params[p].size());
    std::vector<float> step(m.params[p].size());
    for (size_t i = 0; i < expect.size(); ++i) {
      const double g = grads[p][i];
      expect[i] = -adam.lr * g / (std::fabs(g) + adam.eps);
      step[i] = static_cast<float>(static_cast<double>(after.params[p].data[i]) - m.params[p].data[i]);
    }
    ref::expect_close(step, expect, 1e-4, 1e-7, "first Adam step of " + specs[p].name);
  }
}

// Random pixels and labels: enough to drive the optimizer, no download needed.
Dataset synthetic_dataset(int count, uint32_t seed) {
  std::mt19937 rng(seed);
  Dataset d;
  d.count = count;
  d.rows = d.cols = 28;
  d.pixels.resize(static_cast<size_t>(count) * 28 * 28);
  for (uint8_t& p : d.pixels) p = static_cast<uint8_t>(rng() & 0xff);
  for (int i = 0; i < count; ++i) d.labels.push_back(static_cast<uint8_t>(rng() % 10));
  return d;
}

// Threads split each batch, but each thread's slice and the order in which the slices' gradients are summed are
// fixed, so a run is a pure function of (data, seed, options).
TEST(Training, SameSeedGivesBitIdenticalParameters) {
  const Dataset data = synthetic_dataset(100, 10100);  // 100 = 3 full batches of 32 and one of 4
  TrainOptions opt;
  opt.epochs = 2;
  opt.seed = 7;
  opt.progress = false;
  const Model init = Model::glorot(Architecture::reference(), 3);
  auto b1 = make_cpu_backend();
  Model m1 = init;
  train_model(*b1, m1, data, opt);
  auto b2 = make_cpu_backend();
  Model m2 = init;
  train_model(*b2, m2, data, opt);
  expect_same_params(m1, m2, "two runs with the same seed");
  // Re-using a backend: load_model resets Adam's state, so the run repeats exactly.
  Model m3 = init;
  train_model(*b1, m3, data, opt);
  expect_same_params(m1, m3, "a second run on the same backend");
  // And the seed matters (through the shuffle).
  opt.seed = 8;
  Model m4 = init;
  train_model(*b1, m4, data, opt);
  EXPECT_NE(0, std::memcmp(m1.params[0].ptr(), m4.params[0].ptr(), m1.params[0].size() * sizeof(float)))
      << "a different seed gave the same parameters";
  // Training moved the parameters at all.
  EXPECT_NE(0, std::memcmp(m1.params[0].ptr(), init.params[0].ptr(), init.params[0].size() * sizeof(float)));
}

// Shift augmentation: reproducible (a function of seed, epoch and image), and it changes what is trained on.
TEST(Training, ShiftAugmentationIsReproducibleAndChangesTheRun) {
  const Dataset data = synthetic_dataset(64, 10200);
  TrainOptions opt;
  opt.epochs = 1;
  opt.seed = 7;
  opt.progress = false;
  const Model init = Model::glorot(Architecture::parse("1x28x28:conv2k3,relu,pool2,flatten,dense10"), 3);
  auto backend = make_cpu_backend();
  Model plain = init, a1 = init, a2 = init;
  train_model(*backend, plain, data, opt);
  opt.augment_shift = 2;
  train_model(*backend, a1, data, opt);
  train_model(*backend, a2, data, opt);
  expect_same_params(a1, a2, "two augmented runs with the same seed");
  EXPECT_NE(0, std::memcmp(a1.params[0].ptr(), plain.params[0].ptr(), plain.params[0].size() * sizeof(float)))
      << "the augmentation changed nothing";
}

TEST(Training, EpochOrderIsAPermutationThatChangesEachEpoch) {
  for (int count : {0, 1, 2, 7, 1000}) {
    for (int epoch : {1, 2, 3}) {
      std::vector<int> order = epoch_order(count, 42, epoch);
      ASSERT_EQ(static_cast<int>(order.size()), count);
      std::vector<int> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i < count; ++i) ASSERT_EQ(sorted[i], i) << "count " << count << ", epoch " << epoch;
      EXPECT_EQ(order, epoch_order(count, 42, epoch)) << "depends only on (seed, epoch)";
    }
  }
  const auto e1 = epoch_order(1000, 42, 1), e2 = epoch_order(1000, 42, 2);
  EXPECT_NE(e1, e2);
  EXPECT_NE(e1, epoch_order(1000, 43, 1));
  std::vector<int> identity(1000);
  for (int i = 0; i < 1000; ++i) identity[i] = i;
  EXPECT_NE(e1, identity);
  // A shuffle, not a rotation or a few swaps: few elements stay in place (1 expected for a random permutation).
  int fixed = 0;
  for (int i = 0; i < 1000; ++i) fixed += e1[i] == i;
  EXPECT_LE(fixed, 10);
}

// ---- initialisation -------------------------------------------------------------------------------------------

TEST(Model, GlorotIsReproducibleAndWithinLimits) {
  for (const char* text : {Architecture::reference_string(), "3x9x7:conv4k2,relu,pool3,flatten,dense6,relu,dense2"}) {
    SCOPED_TRACE(text);
    const Architecture arch = Architecture::parse(text);
    const Model a = Model::glorot(arch, 5), b = Model::glorot(arch, 5), c = Model::glorot(arch, 6);
    expect_same_params(a, b, "glorot with the same seed");
    const auto specs = arch.params();
    ASSERT_EQ(a.params.size(), specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      SCOPED_TRACE(specs[i].name);
      const Tensor& t = a.params[i];
      EXPECT_EQ(t.shape, specs[i].shape);
      if (specs[i].is_bias) {
        for (float v : t.data) EXPECT_EQ(v, 0.0f);
        continue;
      }
      const int64_t receptive = t.shape.size() == 4 ? t.shape[2] * t.shape[3] : 1;
      const double limit = std::sqrt(6.0 / static_cast<double>(t.shape[1] * receptive + t.shape[0] * receptive));
      double max_abs = 0, sum = 0;
      for (float v : t.data) {
        max_abs = std::max(max_abs, static_cast<double>(std::fabs(v)));
        sum += v;
      }
      EXPECT_LE(max_abs, limit * (1 + 1e-6));
      // Uniform on [-limit, limit]: the extremes are reached and the mean is near 0 (4 standard errors).
      const double n = static_cast<double>(t.size());
      if (n >= 100) {
        EXPECT_GE(max_abs, 0.9 * limit);
      }
      EXPECT_LE(std::fabs(sum / n), 4 * limit / std::sqrt(3 * n));
      EXPECT_NE(0, std::memcmp(t.ptr(), c.params[i].ptr(), t.size() * sizeof(float))) << "seed ignored";
    }
  }
}

// ---- model files ----------------------------------------------------------------------------------------------

TEST(Model, SaveLoadRoundTripIsExact) {
  TempDir dir;
  for (const char* text : {Architecture::reference_string(), "2x3x3:flatten,dense4,relu,dense3"}) {
    SCOPED_TRACE(text);
    const Model m = ref::random_model(Architecture::parse(text), 10200);
    const std::string path = dir.file("model.safetensors");
    m.save(path, {{"note", "round trip"}});
    const Model back = Model::load(path);
    EXPECT_EQ(back.arch.to_string(), m.arch.to_string());
    expect_same_params(m, back, "save -> load");
    EXPECT_EQ(back.serialize({{"note", "round trip"}}), m.serialize({{"note", "round trip"}}));
  }
}

// The InputError message of loading `path`, or a note that none (or something else) was thrown.
std::string load_error(const std::string& path) {
  try {
    Model::load(path);
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an InputError: ") + e.what();
  }
  return "no error";
}

SafetensorsFile file_of(const Model& m, const std::map<std::string, std::string>& metadata) {
  SafetensorsFile f;
  f.metadata = metadata;
  const auto specs = m.arch.params();
  for (size_t i = 0; i < specs.size(); ++i) f.tensors.emplace_back(specs[i].name, m.params[i]);
  return f;
}

TEST(Model, LoadRejectsTensorsThatDoNotFitAndNamesThem) {
  TempDir dir;
  const Architecture ref_arch = Architecture::reference();
  const Model m = ref::random_model(ref_arch, 10300);
  const std::map<std::string, std::string> meta = {{"nudge.architecture", ref_arch.to_string()}};
  struct Case {
    const char* name;
    std::string expect;  // the tensor the message must name
    std::function<void(SafetensorsFile&)> damage;
  };
  const std::vector<Case> cases = {
      {"wrong shape", "conv2.weight",
       [](SafetensorsFile& f) {
         f.tensors[2].second = Tensor(std::vector<int64_t>{36, 24, 2, 2});  // conv2.weight should be [36,24,3,3]
       }},
      {"missing", "dense2.bias", [](SafetensorsFile& f) { f.tensors.pop_back(); }},
      {"unexpected", "conv9.weight", [](SafetensorsFile& f) { f.tensors.emplace_back("conv9.weight", Tensor(std::vector<int64_t>{2})); }},
      {"non-finite", "dense1.bias",
       [](SafetensorsFile& f) { f.tensors[7].second.data[3] = std::numeric_limits<float>::infinity(); }},
      {"architecture of another model", "conv1.weight",
       [](SafetensorsFile& f) { f.metadata["nudge.architecture"] = "1x28x28:conv3k3,relu,flatten,dense10"; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SafetensorsFile f = file_of(m, meta);
    c.damage(f);
    const std::string path = dir.file(std::string("bad_") + std::to_string(&c - cases.data()) + ".safetensors");
    write_safetensors(path, f);
    const std::string msg = load_error(path);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "message: " << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "the message should name the file: " << msg;
  }
}

// A PyTorch export carries the reference tensors and no "nudge.architecture": it is the reference model.
TEST(Model, FileWithoutArchitectureMetadataIsTheReference) {
  TempDir dir;
  const Model m = ref::random_model(Architecture::reference(), 10400);
  for (const auto& meta : {std::map<std::string, std::string>{{"format", "pt"}}, std::map<std::string, std::string>{}}) {
    const std::string path = dir.file("export.safetensors");
    // Written straight from the safetensors layer, in PyTorch's alphabetical tensor order.
    SafetensorsFile f = file_of(m, meta);
    std::sort(f.tensors.begin(), f.tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    const std::string bytes = serialize_safetensors(f);
    {
      std::FILE* out = std::fopen(path.c_str(), "wb");
      ASSERT_NE(out, nullptr);
      ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), out), bytes.size());
      std::fclose(out);
    }
    const Model back = Model::load(path);
    EXPECT_TRUE(back.arch == Architecture::reference()) << back.arch.to_string();
    expect_same_params(m, back, "PyTorch-style export");
  }
}

}  // namespace
}  // namespace nudge
