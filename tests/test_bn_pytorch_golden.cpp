// nudge's training-mode forward and backward of a CNN with BatchNorm2d and BatchNorm1d against PyTorch's own, from
// the golden fixture tests/data/bn/bn_training_step.json (tools/onnx/make_bn_training_fixture.py, torch 1.13): the
// logits, the mean cross-entropy, the gradient of every trained tensor and the running statistics after the step.
// Both sides compute in float32 in different orders (PyTorch's CPU batch norm accumulates in double, as nudge's
// does), so the bound is a float tolerance relative to each quantity's size; the test prints the max-difference table.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "architecture.h"
#include "atomic_file.h"
#include "cpu_backend.h"
#include "cpu_network.h"
#include "model.h"
#include "optimize_math.h"

namespace nudge {
namespace {

const std::string kFixture = std::string(NUDGE_SOURCE_DIR) + "/tests/data/bn/bn_training_step.json";

std::vector<float> floats_of(const nlohmann::json& j) {
  std::vector<float> v;
  for (const auto& x : j) v.push_back(static_cast<float>(x.get<double>()));
  return v;
}

struct Difference {
  std::string what;
  double max_abs = 0, scale = 0;
};

// |nudge - torch| <= kAtolPerMax * max|torch| + kRtol |torch|: float32 sums in different orders. Measured worst
// max|diff| / max|torch| over every quantity (the printed table, 2026-12-03): 2.1e-6, d/dbn1.bias; logits 2.6e-7,
// running statistics <= 9e-8. The bound leaves ~5x.
constexpr double kAtolPerMax = 1e-5;
constexpr double kRtol = 1e-5;

// scale_floor: the size the differences are measured against when the quantity itself is only rounding noise.
Difference compare(const std::string& what, const float* got, const std::vector<float>& torch, double scale_floor = 0) {
  Difference d{what, 0, scale_floor};
  for (float t : torch) d.scale = std::max(d.scale, static_cast<double>(std::fabs(t)));
  for (size_t i = 0; i < torch.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - torch[i]);
    d.max_abs = std::max(d.max_abs, e);
    EXPECT_LE(e, kAtolPerMax * d.scale + kRtol * std::fabs(torch[i]))
        << what << "[" << i << "]: nudge " << got[i] << ", torch " << torch[i];
  }
  return d;
}

TEST(BatchNormGolden, TrainingStepMatchesPyTorch) {
  const nlohmann::json j = nlohmann::json::parse(read_file(kFixture));
  ASSERT_EQ(j.at("format"), "nudge-bn-training-fixture");
  ASSERT_EQ(j.at("version"), 1);
  ASSERT_EQ(j.at("eps").get<double>(), kBatchNormEps);
  ASSERT_EQ(j.at("momentum").get<double>(), kBatchNormMomentum);
  const Architecture arch = Architecture::parse(j.at("architecture").get<std::string>());
  const int N = j.at("batch"), K = arch.num_classes();
  const std::vector<float> x = floats_of(j.at("inputs"));
  std::vector<int32_t> labels;
  for (const auto& l : j.at("labels")) labels.push_back(l.get<int32_t>());
  ASSERT_EQ(x.size(), static_cast<size_t>(N) * arch.input.size());

  // The model in nudge's tensor order; the fixture names each tensor as PyTorch's state_dict does.
  Model m;
  m.arch = arch;
  const auto specs = arch.params();
  for (const ParamSpec& s : specs) {
    const auto& t = j.at("tensors").at(s.name);
    ASSERT_EQ(t.at("shape").get<std::vector<int64_t>>(), s.shape) << s.name;
    Tensor tensor(s.shape);
    tensor.data = floats_of(t.at("data"));
    m.params.push_back(std::move(tensor));
  }
  assert_params_match_architecture(m, "fixture");

  // Forward in training mode (there is no dropout, so the keys are never read) and the batch-mean cross-entropy.
  std::vector<const float*> params;
  for (const Tensor& t : m.params) params.push_back(t.ptr());
  std::vector<uint32_t> keys(N);
  const TrainingPass pass{0, 1, keys.data()};
  CpuNetwork net(arch);
  net.forward(params, x.data(), N, &pass);
  std::vector<float> dlogits(static_cast<size_t>(N) * K), probs(K), onehot(K);
  double loss = 0;
  for (int i = 0; i < N; ++i) {
    std::fill(onehot.begin(), onehot.end(), 0.0f);
    onehot[labels[i]] = 1.0f;
    loss += loss_forward_backward_one(net.logits() + i * K, K, onehot.data(), TargetKind::OneHot, labels[i],
                                      LossKind::CrossEntropy, 0.0f, probs.data(), dlogits.data() + i * K);
    for (int k = 0; k < K; ++k) dlogits[i * K + k] /= static_cast<float>(N);
  }
  loss /= N;
  std::vector<std::vector<float>> grads;
  std::vector<float*> gp;
  for (const Tensor& t : m.params) grads.emplace_back(t.size());
  for (auto& g : grads) gp.push_back(g.data());
  net.backward(params, dlogits.data(), N, &gp, nullptr);

  std::vector<Difference> table;
  table.push_back(compare("logits", net.logits(), floats_of(j.at("logits"))));
  const float loss_f = static_cast<float>(loss);
  table.push_back(compare("loss", &loss_f, {static_cast<float>(j.at("loss").get<double>())}));
  for (size_t p = 0; p < specs.size(); ++p) {
    if (specs[p].is_buffer) continue;
    // The bias of a layer right before a bn has gradient 0 (the batch mean takes it out): both sides give the
    // rounding of a cancelling sum (~1e-7 here), measured against the layer's weight gradient.
    const bool before_bn = specs[p].is_bias && arch.layers[specs[p].layer + 1].kind == LayerKind::BatchNorm;
    double floor = 0;
    if (before_bn)
      for (float g : floats_of(j.at("grads").at(specs[p - 1].name))) floor = std::max(floor, static_cast<double>(std::fabs(g)));
    table.push_back(compare("d/d" + specs[p].name, grads[p].data(), floats_of(j.at("grads").at(specs[p].name)), floor));
  }

  // The running statistics through the backend's training step (which also takes an Adam step; the statistics come
  // from its forward, before the update).
  auto backend = make_cpu_backend();
  backend->load_model(m);
  const TrainStepResult r = backend->train_step(x.data(), labels.data(), N, AdamConfig{});
  const float step_loss = static_cast<float>(r.loss_sum / N);
  table.push_back(compare("train_step loss", &step_loss, {static_cast<float>(j.at("loss").get<double>())}));
  Model after;
  backend->store_model(after);
  for (size_t p = 0; p < specs.size(); ++p)
    if (specs[p].is_buffer)
      table.push_back(compare(specs[p].name + " after", after.params[p].ptr(), floats_of(j.at("running_after").at(specs[p].name))));

  std::printf("[golden] nudge vs PyTorch %s, one training step of %s on %d images:\n",
              j.at("torch").get<std::string>().c_str(), arch.to_string().c_str(), N);
  std::printf("  %-24s %12s %12s %12s\n", "quantity", "max|diff|", "max|torch|", "ratio");
  for (const Difference& d : table)
    std::printf("  %-24s %12.3g %12.3g %12.3g\n", d.what.c_str(), d.max_abs, d.scale, d.max_abs / std::max(d.scale, 1e-30));
}

}  // namespace
}  // namespace nudge
