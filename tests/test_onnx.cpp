// ONNX import and export (host/onnx). The fixtures in tests/data/onnx were written by tools/onnx/make_fixtures.py
// with PyTorch 1.13 (torch.onnx.export): each holds 8 images and PyTorch's own logits for them, so nudge's import is
// checked against the framework that wrote the file, not against nudge's idea of it. The trained model
// data/models/pytorch_mnist_cnn.onnx (tools/onnx/train_pytorch_mnist.py) comes with PyTorch's predicted class for
// each of the 10,000 MNIST test images.
//
// Tolerance of the logits. nudge and PyTorch both compute in float32, in different orders; the largest sums are
// the first dense layers' (up to 3,136 terms). Both errors are bounded by about sqrt(L) * 2^-24 * sum|terms| per
// output; with these weights the logits are O(0.1..1) and the measured worst difference is printed. The bound
// |nudge - torch| <= 1e-5 + 1e-4 |torch| is ~50x the measured worst (see the comment at kLogitRtol).
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "atomic_file.h"
#include "cli_sandbox.h"
#include "cpu_network.h"
#include "dataset.h"
#include "errors.h"
#include "make_backend.h"
#include "mnist.h"
#include "model.h"
#include "model_file.h"
#include "model_fold.h"
#include "onnx_model.h"
#include "reference_math.h"

#ifdef NUDGE_HAVE_ONNX
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#endif

namespace nudge {
namespace {

namespace fs = std::filesystem;
using testing_support::CliSandbox;

// Measured worst |nudge - torch| / (1 + |torch|) over all fixtures: see the printed line (4.2e-7 on 2026-12-03).
constexpr double kLogitAtol = 1e-5;
constexpr double kLogitRtol = 1e-4;

const std::string kFixtures = std::string(NUDGE_SOURCE_DIR) + "/tests/data/onnx/";

std::vector<float> read_floats(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

std::vector<float> cpu_logits(const Model& m, const std::vector<float>& x, int n) {
  CpuNetwork net(m.arch);
  std::vector<const float*> params;
  for (const Tensor& t : m.params) params.push_back(t.data.data());
  net.forward(params, x.data(), n);
  return std::vector<float>(net.logits(), net.logits() + static_cast<size_t>(n) * m.arch.num_classes());
}

std::string refusal_of(const std::string& bytes) {
  try {
    model_from_onnx(bytes, "hostile.onnx");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

#ifdef NUDGE_HAVE_ONNX
#define REQUIRE_ONNX()
#else
#define REQUIRE_ONNX() GTEST_SKIP() << "this build has no ONNX support (install libonnx-dev libprotobuf-dev)"
#endif

const char* const kFixtureNames[] = {"padded_bn",  "padded_bn_unfused", "fastat_stride2", "pool_variants",
                                     "pool_variants_shape_chain", "reference", "matmul_add", "gap",
                                     "dropout_identity"};

TEST(Onnx, PyTorchExportsGiveTorchsLogits) {
  REQUIRE_ONNX();
  double worst = 0;
  for (const char* name : kFixtureNames) {
    SCOPED_TRACE(name);
    const Model m = load_model_file(kFixtures + name + ".onnx");
    const auto x = read_floats(kFixtures + name + ".inputs.bin");
    const auto torch = read_floats(kFixtures + name + ".logits.bin");
    const int n = static_cast<int>(x.size() / m.arch.input.size());
    ASSERT_EQ(n, 8);
    ASSERT_EQ(torch.size(), static_cast<size_t>(n) * m.arch.num_classes());
    // The inference form every command runs (bn folded), and the unfolded network in eval mode.
    const auto got = cpu_logits(fold_for_inference(m), x, n);
    const auto unfolded = cpu_logits(m, x, n);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_LE(std::fabs(static_cast<double>(unfolded[i]) - torch[i]), kLogitAtol + kLogitRtol * std::fabs(torch[i]))
          << "logit " << i << " of the unfolded network: nudge " << unfolded[i] << ", torch " << torch[i];
      const double d = std::fabs(static_cast<double>(got[i]) - torch[i]);
      worst = std::max(worst, d / (1 + std::fabs(torch[i])));
      ASSERT_LE(d, kLogitAtol + kLogitRtol * std::fabs(torch[i])) << "logit " << i << ": nudge " << got[i] << ", torch " << torch[i];
    }
  }
  std::printf("worst |nudge - torch| / (1 + |torch|) over the fixtures: %.2g\n", worst);
}

// What the importer made of each PyTorch graph, spelled as nudge's grammar: padding, stride, the overlapping max-pool,
// average pooling, the batch norms as bn layers (trainable by nudge train --init; inference folds them, so the
// folded architecture is the one without them), the dropped softmax, the Reshape chain.
TEST(Onnx, PyTorchExportsReadAsTheirArchitectures) {
  REQUIRE_ONNX();
  const std::pair<const char*, const char*> cases[] = {
      {"padded_bn", "1x28x28:conv8k3p1,relu,pool2,conv16k3p1,relu,pool2,flatten,dense32,bn,relu,dense10"},
      {"padded_bn_unfused", "1x28x28:conv8k3p1,bn,relu,pool2,conv16k3p1,bn,relu,pool2,flatten,dense32,bn,relu,dense10"},
      {"fastat_stride2", "1x28x28:conv16k4s2p1,relu,conv32k4s2p1,relu,flatten,dense32,relu,dense10"},
      {"pool_variants", "1x28x28:conv8k5,relu,pool3s2p1,conv8k3p1,relu,avgpool2,flatten,dense10"},
      {"pool_variants_shape_chain", "1x28x28:conv8k5,relu,pool3s2p1,conv8k3p1,relu,avgpool2,flatten,dense10"},
      {"reference", Architecture::reference_string()},
      {"matmul_add", "1x28x28:conv4k3,relu,pool2,flatten,dense10"},
      {"gap", "1x28x28:conv8k3p1,relu,conv10k3s2p1,relu,avgpool14,flatten,dense10"},
  };
  for (const auto& [name, arch] : cases) {
    SCOPED_TRACE(name);
    const Model m = load_model_file(kFixtures + name + ".onnx");
    EXPECT_EQ(m.arch.to_string(), arch);
    EXPECT_NE(m.metadata.at("nudge.source").find("onnx from pytorch"), std::string::npos);
    std::string folded = arch;
    for (size_t at; (at = folded.find(",bn")) != std::string::npos;) folded.erase(at, 3);
    EXPECT_EQ(fold_for_inference(m).arch.to_string(), folded);
    EXPECT_EQ(load_inference_model(kFixtures + name + ".onnx").arch.to_string(), folded);
  }
  EXPECT_NE(load_model_file(kFixtures + "pool_variants.onnx").metadata.at("nudge.source").find("final softmax dropped"),
            std::string::npos);
}

// The acceptance model: a CNN with padded and stride-2 convolutions, batch norm and dropout, trained in PyTorch.
// nudge's predictions on the 10,000 test images against PyTorch's own: at most one may differ.
TEST(Onnx, PyTorchTrainedModelPredictsAsTorchOnTheTestSet) {
  REQUIRE_ONNX();
  REQUIRE_MNIST();
  const std::string dir = std::string(NUDGE_SOURCE_DIR) + "/data/models/";
  const Model m = load_model_file(dir + "pytorch_mnist_cnn.onnx");
  const std::string torch_pred = read_file(dir + "pytorch_mnist_cnn.test_predictions.bin");
  const Dataset test = load_dataset(testing_support::mnist_dir(), "test");
  ASSERT_EQ(torch_pred.size(), static_cast<size_t>(test.count));
  const int K = m.arch.num_classes(), chunk = 1000;
  int differ = 0, correct_nudge = 0, correct_torch = 0;
  // The CPU backend's predict (all threads): the softmax keeps the logits' argmax.
  auto backend = make_backend("cpu");
  backend->load_model(m);
  std::vector<float> x(static_cast<size_t>(chunk) * m.arch.input.size()), probs(static_cast<size_t>(chunk) * K);
  for (int n0 = 0; n0 < test.count; n0 += chunk) {
    for (int j = 0; j < chunk; ++j) test.image_as_float(n0 + j, x.data() + static_cast<size_t>(j) * m.arch.input.size());
    backend->predict(x.data(), chunk, probs.data());
    for (int j = 0; j < chunk; ++j) {
      const float* z = probs.data() + static_cast<size_t>(j) * K;
      const int pred = static_cast<int>(std::max_element(z, z + K) - z);
      const int tp = static_cast<uint8_t>(torch_pred[n0 + j]);
      differ += pred != tp;
      correct_nudge += pred == test.labels[n0 + j];
      correct_torch += tp == test.labels[n0 + j];
    }
  }
  std::printf("pytorch_mnist_cnn.onnx: nudge %d/10000 correct, PyTorch %d/10000, %d predictions differ\n",
              correct_nudge, correct_torch, differ);
  EXPECT_LE(differ, 1);
  EXPECT_GE(correct_nudge, 9800);
}

#ifdef NUDGE_HAVE_ONNX
// onnx::checker (ONNX's own C++ checker, the one python's onnx.checker wraps) on an export.
void expect_checker_accepts(const std::string& bytes) {
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromString(bytes));
  EXPECT_NO_THROW(onnx::checker::check_model(proto));
}
#endif

void expect_same_model(const Model& a, const Model& b) {
  EXPECT_EQ(a.arch.to_string(), b.arch.to_string());
  ASSERT_EQ(a.params.size(), b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    EXPECT_EQ(a.params[i].shape, b.params[i].shape);
    EXPECT_EQ(0, std::memcmp(a.params[i].data.data(), b.params[i].data.data(), a.params[i].size() * 4)) << "tensor " << i;
  }
}

// Every committed nudge model, the fixtures as imported, and glorot models of every layer kind: export, the ONNX
// checker accepts it, import gives the same architecture and the same bits, and the recipe survives.
TEST(Onnx, ExportIsCheckedAndReadsBackBitIdentical) {
  REQUIRE_ONNX();
  std::vector<std::pair<std::string, Model>> models;
  for (const char* f : {"mnist_cnn", "mnist_cnn_robust", "mnist_cnn_seed2", "judge_mlp"})
    models.emplace_back(f, Model::load(std::string(NUDGE_SOURCE_DIR) + "/data/models/" + f + ".safetensors"));
  for (const char* name : kFixtureNames) models.emplace_back(name, load_model_file(kFixtures + name + ".onnx"));
  for (const char* arch : {"1x28x28:conv8k3p1,relu,pool3s2p1,conv16k4s2p1,relu,avgpool2,flatten,dense10",
                           "3x9x7:conv4k2,pool3,relu,conv2k1s2,relu,flatten,dense6,relu,dense3",
                           "1x28x28:flatten,dense10"})
    models.emplace_back(arch, Model::glorot(Architecture::parse(arch), 7));
  // bn (running statistics away from the identity) and dropout: BatchNormalization and Dropout nodes with the ratio.
  for (const char* arch : {"1x28x28:conv8k3p1,bn,relu,pool2,dropout0.25,flatten,dense16,bn,relu,dropout0.5,dense10",
                           "1x28x28:dropout0.125,flatten,dense12,bn,dense10"})
    models.emplace_back(arch, ref::random_model(Architecture::parse(arch), 8));
  for (const auto& [name, m] : models) {
    SCOPED_TRACE(name);
    const std::string bytes = model_to_onnx(m);
#ifdef NUDGE_HAVE_ONNX
    expect_checker_accepts(bytes);
#endif
    const Model back = model_from_onnx(bytes, name + ".onnx");
    expect_same_model(m, back);
    if (m.metadata.count("nudge.recipe")) {
      ASSERT_EQ(back.metadata.count("nudge.recipe"), 1u);
      EXPECT_EQ(back.metadata.at("nudge.recipe"), m.metadata.at("nudge.recipe"));
    }
    EXPECT_EQ(model_to_onnx(back), bytes) << "a second export must give the same bytes";
  }
}

struct HostileFile {
  const char* file;
  const char* says;
};

TEST(Onnx, HostileFilesAreRefusedNamingNodeOpAndAttribute) {
  REQUIRE_ONNX();
  const HostileFile cases[] = {
      {"unknown_op", "node 'leaky1' (LeakyRelu): op LeakyRelu is not supported"},
      {"branch", "value 'r1' feeds 2 nodes"},
      {"conv_group", "node 'conv2' (Conv): attribute 'group' = 2 is not supported"},
      {"dilated", "node 'conv2' (Conv): attribute 'dilations' = [2,2] is not supported"},
      {"avgpool_pad", "node 'pool' (AveragePool): attribute 'pads' = [1,1,1,1] is not supported"},
      {"maxpool_ceil", "node 'pool' (MaxPool): attribute 'ceil_mode' = 1 is not supported"},
      {"bn_after_relu", "node 'bn_after_relu' (BatchNormalization): does not directly follow"},
      {"truncated", "not a readable ONNX file"},
      {"dynamic_hw", "input 'input' has a symbolic dimension H = 'H'"},
  };
  for (const HostileFile& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string msg = refusal_of(read_file(kFixtures + "hostile/" + c.file + ".onnx"));
    EXPECT_NE(msg.find(c.says), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(load_model_file(kFixtures + "hostile/valid_base.onnx"));
  // A model for 3-channel images loads; the commands then refuse it for MNIST (check_model_fits, CLI test below).
  EXPECT_EQ(load_model_file(kFixtures + "hostile/nchw_3channel.onnx").arch.input, (Shape3{3, 28, 28}));
}

#ifdef NUDGE_HAVE_ONNX
// Hostile graphs built here: each starts from a valid export and breaks one thing.
onnx::ModelProto valid_proto() {
  onnx::ModelProto p;
  p.ParseFromString(model_to_onnx(Model::glorot(Architecture::parse("1x8x8:conv2k3p1,relu,pool2,flatten,dense3"), 1)));
  return p;
}

std::string bytes_of(const onnx::ModelProto& p) {
  std::string s;
  p.SerializeToString(&s);
  return s;
}

onnx::TensorProto* initializer(onnx::ModelProto& p, const std::string& name) {
  for (auto& t : *p.mutable_graph()->mutable_initializer())
    if (t.name() == name) return &t;
  return nullptr;
}

// BatchNormalization and Dropout nodes as nudge reads them, each graph a nudge export changed in one thing.
TEST(Onnx, BatchNormAndDropoutNodesBecomeLayersOrAreRefused) {
  const Model m = ref::random_model(Architecture::parse("1x6x6:conv2k3,bn,relu,dropout0.5,flatten,dense3"), 30);
  auto proto = [&] {
    onnx::ModelProto p;
    p.ParseFromString(model_to_onnx(m));
    return p;
  };
  auto node = [](onnx::ModelProto& p, const std::string& op) {
    for (auto& n : *p.mutable_graph()->mutable_node())
      if (n.op_type() == op) return &n;
    return static_cast<onnx::NodeProto*>(nullptr);
  };
  {  // another epsilon goes into the variance: var + eps = var' + 1e-5
    auto p = proto();
    onnx::NodeProto* bn = node(p, "BatchNormalization");
    for (auto& a : *bn->mutable_attribute())
      if (a.name() == "epsilon") a.set_f(1e-3f);
    const Model back = model_from_onnx(bytes_of(p), "eps.onnx");
    for (int c = 0; c < 2; ++c)
      EXPECT_EQ(back.params[5].data[c], static_cast<float>(static_cast<double>(m.params[5].data[c]) + 1e-3f - 1e-5));
  }
  {  // a ratio of 0 is no layer; a ratio of 1 or a training_mode of true is refused
    auto p = proto();
    initializer(p, node(p, "Dropout")->input(1))->mutable_raw_data()->assign(4, '\0');
    EXPECT_EQ(model_from_onnx(bytes_of(p), "r0.onnx").arch.to_string(), "1x6x6:conv2k3,bn,relu,flatten,dense3");
    const float one = 1.0f;
    initializer(p, node(p, "Dropout")->input(1))->mutable_raw_data()->assign(reinterpret_cast<const char*>(&one), 4);
    EXPECT_NE(refusal_of(bytes_of(p)).find("ratio 1.000000 is not in [0, 1)"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // a Dropout between the Conv and its BatchNormalization
    auto p = proto();
    onnx::NodeProto* bn = node(p, "BatchNormalization");
    auto* d = p.mutable_graph()->add_node();
    d->set_op_type("Dropout");
    d->set_name("early_dropout");
    d->add_input(bn->input(0));
    d->add_output("dropped");
    bn->set_input(0, "dropped");
    EXPECT_NE(refusal_of(bytes_of(p)).find("(BatchNormalization): follows a Dropout"), std::string::npos)
        << refusal_of(bytes_of(p));
  }
}

TEST(Onnx, ConstructedHostileGraphsAreRefused) {
  {  // dims claiming 2^40 floats: refused from the dims, before anything is allocated
    auto p = valid_proto();
    auto* w = initializer(p, "conv1.weight");
    w->set_dims(0, int64_t{1} << 40);
    EXPECT_NE(refusal_of(bytes_of(p)).find("more than"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // raw bytes that disagree with the dims
    auto p = valid_proto();
    initializer(p, "dense1.weight")->mutable_raw_data()->resize(12);
    EXPECT_NE(refusal_of(bytes_of(p)).find("holds 12 bytes"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // a negative dim
    auto p = valid_proto();
    initializer(p, "conv1.bias")->set_dims(0, -2);
    EXPECT_NE(refusal_of(bytes_of(p)).find("negative dimension"), std::string::npos);
  }
  {  // a cycle: the relu reads the pool's output, which reads the relu's
    auto p = valid_proto();
    auto* g = p.mutable_graph();
    g->mutable_node(1)->set_input(0, g->node(2).output(0));
    const std::string msg = refusal_of(bytes_of(p));
    EXPECT_FALSE(msg.empty());
  }
  {  // a weight computed in the graph instead of an initializer
    auto p = valid_proto();
    p.mutable_graph()->mutable_node(0)->set_input(1, "t2");
    EXPECT_NE(refusal_of(bytes_of(p)).find("is computed in the graph"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // external data
    auto p = valid_proto();
    initializer(p, "conv1.weight")->set_data_location(onnx::TensorProto::EXTERNAL);
    EXPECT_NE(refusal_of(bytes_of(p)).find("external file"), std::string::npos);
  }
  {  // int8 weights
    auto p = valid_proto();
    initializer(p, "conv1.weight")->set_data_type(onnx::TensorProto::INT8);
    EXPECT_NE(refusal_of(bytes_of(p)).find("float32 weights only"), std::string::npos);
  }
  {  // a Gemm straight on the 4-D map (its Flatten removed)
    auto p = valid_proto();
    auto* g = p.mutable_graph();
    g->mutable_node(4)->set_input(0, g->node(2).output(0));
    g->mutable_node()->DeleteSubrange(3, 1);
    EXPECT_NE(refusal_of(bytes_of(p)).find("a Flatten must come before it"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // a NaN weight: the same check as safetensors models
    auto p = valid_proto();
    float nan = std::nanf("");
    std::memcpy(&(*initializer(p, "dense1.weight")->mutable_raw_data())[0], &nan, 4);
    EXPECT_NE(refusal_of(bytes_of(p)).find("NaN"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // an extra node off the chain
    auto p = valid_proto();
    auto* n = p.mutable_graph()->add_node();
    n->set_op_type("Relu");
    n->set_name("stray");
    n->add_input("conv1.bias");
    n->add_output("unused");
    EXPECT_NE(refusal_of(bytes_of(p)).find("'stray' (Relu) is not on the path"), std::string::npos) << refusal_of(bytes_of(p));
  }
  {  // two graph outputs
    auto p = valid_proto();
    *p.mutable_graph()->add_output() = p.graph().output(0);
    EXPECT_NE(refusal_of(bytes_of(p)).find("2 outputs"), std::string::npos);
  }
  {  // a shape computation that would take 2^30 evaluations without memoisation: Gather(g, g) 30 deep
    auto p = valid_proto();
    auto* g = p.mutable_graph();
    onnx::TensorProto* zero = g->add_initializer();
    zero->set_name("zero");
    zero->set_data_type(onnx::TensorProto::INT64);
    zero->add_dims(1);
    zero->add_int64_data(0);
    onnx::TensorProto* minus1 = g->add_initializer();
    minus1->set_name("minus1");
    minus1->set_data_type(onnx::TensorProto::INT64);
    minus1->add_dims(1);
    minus1->add_int64_data(-1);
    std::string prev = "zero";
    for (int k = 0; k < 30; ++k) {
      auto* n = g->add_node();
      n->set_op_type("Gather");
      n->add_input(prev);
      n->add_input(prev);
      prev = "gather" + std::to_string(k);
      n->add_output(prev);
    }
    auto* cat = g->add_node();
    cat->set_op_type("Concat");
    cat->add_input(prev);
    cat->add_input("minus1");
    cat->add_output("target_shape");
    auto* axis = cat->add_attribute();
    axis->set_name("axis");
    axis->set_type(onnx::AttributeProto::INT);
    axis->set_i(0);
    // The Flatten (node 3) becomes a Reshape to [0, -1].
    auto* flat = g->mutable_node(3);
    flat->set_op_type("Reshape");
    flat->clear_attribute();
    flat->add_input("target_shape");
    const auto t0 = std::chrono::steady_clock::now();
    const std::string msg = refusal_of(bytes_of(p));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_TRUE(msg.empty()) << msg;  // [0, -1] is a flatten: it imports
    EXPECT_LT(secs, 5.0);
    // And the same chain closed into a loop is refused as a cycle.
    g->mutable_node(5)->set_input(0, prev);  // the first Gather reads the last one
    EXPECT_NE(refusal_of(bytes_of(p)).find("cycle"), std::string::npos) << refusal_of(bytes_of(p));
  }
  // Found by the fuzzer (2026-12-03): a Gather with one input in a Reshape's shape computation was read past its
  // inputs (heap-buffer-overflow); now refused by name.
  EXPECT_NE(refusal_of(read_file(kFixtures + "hostile/fuzz_gather_one_input.onnx")).find("has 1 inputs; it needs 2"),
            std::string::npos)
      << refusal_of(read_file(kFixtures + "hostile/fuzz_gather_one_input.onnx"));
  // Bytes that are not a protobuf at all, and the empty file.
  EXPECT_NE(refusal_of(std::string(64, '\xff')).find("not a readable ONNX file"), std::string::npos);
  EXPECT_NE(refusal_of("").find("no graph"), std::string::npos) << refusal_of("");
}
#endif

// The commands read ONNX wherever they read a model: export, eval, optimize and robustness on the PyTorch-trained
// model; refusals exit 2 with one line.
TEST(Onnx, CommandsReadAndWriteOnnx) {
  REQUIRE_ONNX();
  REQUIRE_MNIST();
  CliSandbox box("nudge_onnx_");
  const std::string src = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn_robust.safetensors";
  const std::string data = testing_support::mnist_dir();
  auto r = box.run({"export", "--model", src, "--onnx", box.path("robust.onnx")});
  ASSERT_EQ(r.code, 0) << r.err;
  r = box.run({"export", "--model", box.path("robust.onnx"), "--safetensors", box.path("back.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_model(Model::load(src), Model::load(box.path("back.safetensors")));
  const auto eval_of = [&](const std::string& model) {
    auto e = box.run({"eval", "--model", model, "--data", data, "--limit", "300", "--device", "cpu"});
    EXPECT_EQ(e.code, 0) << e.err;
    const size_t at = e.out.find("accuracy");
    return at == std::string::npos ? e.out : e.out.substr(at, e.out.find(')', at) - at);
  };
  EXPECT_EQ(eval_of(src), eval_of(box.path("robust.onnx")));

  const std::string torch_model = std::string(NUDGE_SOURCE_DIR) + "/data/models/pytorch_mnist_cnn.onnx";
  r = box.run({"optimize", "--model", torch_model, "--data", data, "--device", "cpu", "--init", "test", "--range", "0:16",
               "--target", "untargeted", "--eps", "0.3", "--norm", "linf", "--optimizer", "sign", "--lr", "0.03", "--steps", "5", "--quiet", "--out", box.path("opt")});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(box.path("opt/summary.json")));
  r = box.run({"robustness", "--model", torch_model, "--data", data, "--device", "cpu", "--range", "0:8", "--eps", "0.3",
               "--attacks", "apgd-ce", "--apgd-iters", "5", "--quiet", "--out", box.path("rob")});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(box.path("rob/summary.json")));

  // Training from an imported model's weights (--init): its architecture is the run's, its start the file's.
  r = box.run({"train", "--init", kFixtures + "fastat_stride2.onnx", "--data", data, "--device", "cpu", "--limit", "200",
               "--epochs", "1", "--out", box.path("tuned.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  const Model tuned = Model::load(box.path("tuned.safetensors"));
  EXPECT_EQ(tuned.arch.to_string(), load_model_file(kFixtures + "fastat_stride2.onnx").arch.to_string());
  EXPECT_NE(tuned.metadata.at("nudge.recipe").find("fastat_stride2.onnx (fnv1a64:"), std::string::npos)
      << tuned.metadata.at("nudge.recipe");
  r = box.run({"train", "--init", kFixtures + "fastat_stride2.onnx", "--arch", "1x28x28:flatten,dense10", "--data", data,
               "--out", box.path("x.safetensors")});
  EXPECT_EQ(r.code, 2) << r.err;
  // A PyTorch model with batch norm, fine-tuned: its bn layers train and stay in the file; eval runs it folded and
  // gets the accuracy its ONNX export gets.
  r = box.run({"train", "--init", kFixtures + "padded_bn_unfused.onnx", "--data", data, "--device", "cpu", "--limit",
               "200", "--epochs", "1", "--out", box.path("bn_tuned.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  const Model bn_tuned = Model::load(box.path("bn_tuned.safetensors"));
  EXPECT_EQ(bn_tuned.arch.to_string(), load_model_file(kFixtures + "padded_bn_unfused.onnx").arch.to_string());
  r = box.run({"export", "--model", box.path("bn_tuned.safetensors"), "--onnx", box.path("bn_tuned.onnx")});
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_model(bn_tuned, load_model_file(box.path("bn_tuned.onnx")));
  EXPECT_EQ(eval_of(box.path("bn_tuned.safetensors")), eval_of(box.path("bn_tuned.onnx")));

  r = box.run({"eval", "--model", kFixtures + "hostile/conv_group.onnx", "--data", data});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("attribute 'group' = 2"), std::string::npos) << r.err;
  r = box.run({"eval", "--model", kFixtures + "hostile/nchw_3channel.onnx", "--data", data});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("takes 3x28x28 inputs"), std::string::npos) << r.err;
  r = box.run({"export", "--model", src});
  EXPECT_EQ(r.code, 2) << r.err;
}

}  // namespace
}  // namespace nudge
