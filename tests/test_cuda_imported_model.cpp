// A model trained elsewhere, on both backends: the PyTorch-trained CNN of tools/onnx/train_pytorch_mnist.py (padded
// and stride-2 convolutions; its batch norm folded and dropout dropped by PyTorch's eval-mode export), as nudge's
// safetensors export of data/models/pytorch_mnist_cnn.onnx, so that a build without ONNX (the GPU bundle's) runs it
// too. On the CPU: the copy is the ONNX file's model bit for bit, and predicts as PyTorch on the 10,000 test images.
// On a GPU (suite CudaImportedModel, in tools/gpu_check.sh's CUDA group): the CUDA backend predicts as PyTorch and as
// the CPU backend, and `nudge optimize` and `nudge robustness` run on it with --device cuda and agree with --device cpu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend.h"
#include "cli_sandbox.h"
#include "cpu_backend.h"
#include "cuda_test_util.h"
#include "dataset.h"
#include "mnist.h"
#include "model.h"
#include "model_file.h"

namespace nudge {
namespace {

const std::string kModels = std::string(NUDGE_SOURCE_DIR) + "/data/models/";
const std::string kSafetensors = kModels + "pytorch_mnist_cnn.safetensors";

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The predicted class of each of the 10,000 test images under `backend`, and its probabilities.
std::vector<int> predict_test_set(Backend& backend, const Dataset& test, int K, std::vector<float>* all_probs = nullptr) {
  const int D = 784, chunk = 1000;
  std::vector<int> pred(test.count);
  std::vector<float> x(static_cast<size_t>(chunk) * D), probs(static_cast<size_t>(chunk) * K);
  if (all_probs) all_probs->resize(static_cast<size_t>(test.count) * K);
  for (int n0 = 0; n0 < test.count; n0 += chunk) {
    const int m = std::min(chunk, test.count - n0);
    for (int j = 0; j < m; ++j) test.image_as_float(n0 + j, x.data() + static_cast<size_t>(j) * D);
    backend.predict(x.data(), m, probs.data());
    for (int j = 0; j < m; ++j) {
      const float* z = probs.data() + static_cast<size_t>(j) * K;
      pred[n0 + j] = static_cast<int>(std::max_element(z, z + K) - z);
    }
    if (all_probs) std::copy_n(probs.data(), static_cast<size_t>(m) * K, all_probs->data() + static_cast<size_t>(n0) * K);
  }
  return pred;
}

int count_differing_from_torch(const std::vector<int>& pred) {
  const std::string torch_pred = read_bytes(kModels + "pytorch_mnist_cnn.test_predictions.bin");
  EXPECT_EQ(torch_pred.size(), pred.size());
  int differ = 0;
  for (size_t i = 0; i < std::min(pred.size(), torch_pred.size()); ++i) differ += pred[i] != static_cast<uint8_t>(torch_pred[i]);
  return differ;
}

TEST(ImportedModel, SafetensorsCopyIsTheOnnxModel) {
#ifndef NUDGE_HAVE_ONNX
  GTEST_SKIP() << "this build has no ONNX support, so the .onnx cannot be read to compare (install libonnx-dev libprotobuf-dev)";
#else
  const Model onnx = load_model_file(kModels + "pytorch_mnist_cnn.onnx");
  const Model copy = Model::load(kSafetensors);
  ASSERT_EQ(onnx.arch.to_string(), copy.arch.to_string());
  ASSERT_EQ(onnx.params.size(), copy.params.size());
  for (size_t i = 0; i < onnx.params.size(); ++i) EXPECT_EQ(onnx.params[i].data, copy.params[i].data) << "tensor " << i;
#endif
}

TEST(ImportedModel, CpuPredictsAsTorchOnTheTestSet) {
  REQUIRE_MNIST();
  const Model m = load_inference_model(kSafetensors);
  const Dataset test = load_dataset(testing_support::mnist_dir(), "test");
  auto cpu = make_cpu_backend();
  cpu->load_model(m);
  const int differ = count_differing_from_torch(predict_test_set(*cpu, test, m.arch.num_classes()));
  std::printf("pytorch_mnist_cnn.safetensors on the CPU: %d of 10,000 predictions differ from PyTorch's\n", differ);
  EXPECT_LE(differ, 1);
}

#if NUDGE_HAVE_CUDA

TEST(CudaImportedModel, PredictsAsTorchAndAsTheCpu) {
  NUDGE_REQUIRE_CUDA_DEVICE();
  REQUIRE_MNIST();
  const Model m = load_inference_model(kSafetensors);
  const int K = m.arch.num_classes();
  const Dataset test = load_dataset(testing_support::mnist_dir(), "test");
  auto cpu = make_cpu_backend();
  cpu->load_model(m);
  auto gpu = make_cuda_backend(0);
  gpu->load_model(m);
  std::vector<float> p_cpu, p_gpu;
  const std::vector<int> pred_cpu = predict_test_set(*cpu, test, K, &p_cpu);
  const std::vector<int> pred_gpu = predict_test_set(*gpu, test, K, &p_gpu);
  const int differ = count_differing_from_torch(pred_gpu);
  std::printf("pytorch_mnist_cnn.safetensors on %s: %d of 10,000 predictions differ from PyTorch's\n",
              gpu->name().c_str(), differ);
  EXPECT_LE(differ, 1);
  // Softmax outputs: four layers with parameters at ~1e-6 of scale each (the parity suites' bound), plus the
  // softmax's exp on logits of tens; 1e-4 absolute on probabilities is ~10x that.
  EXPECT_TRUE(test::all_close("probabilities", p_gpu, p_cpu, {1e-4, 0}));
}

nlohmann::json summary_of(const testing_support::CliSandbox& box, const std::string& dir) {
  std::ifstream f(box.path(dir + "/summary.json"));
  return nlohmann::json::parse(f, nullptr, false);
}

TEST(CudaImportedModel, OptimizeAndRobustnessRunOnBothDevices) {
  NUDGE_REQUIRE_CUDA_DEVICE();
  REQUIRE_MNIST();
  testing_support::CliSandbox box("nudge_imported_");
  const std::string data = testing_support::mnist_dir();
  for (const char* device : {"cpu", "cuda"}) {
    SCOPED_TRACE(device);
    const std::string d(device);
    const auto opt = box.run({"optimize", "--model", kSafetensors, "--device", d, "--count", "64", "--target", "all",
                              "--steps", "60", "--out", box.path("opt_" + d), "--quiet"});
    ASSERT_EQ(opt.code, 0) << opt.err;
    const auto rob = box.run({"robustness", "--model", kSafetensors, "--data", data, "--device", d, "--range", "0:32",
                              "--eps", "0.05,0.1", "--attacks", "apgd-ce,square", "--apgd-iters", "20",
                              "--square-queries", "100", "--out", box.path("rob_" + d), "--quiet"});
    ASSERT_EQ(rob.code, 0) << rob.err;
  }
  const nlohmann::json oc = summary_of(box, "opt_cpu"), og = summary_of(box, "opt_cuda");
  const nlohmann::json rc = summary_of(box, "rob_cpu"), rg = summary_of(box, "rob_cuda");
  ASSERT_FALSE(oc.is_discarded() || og.is_discarded() || rc.is_discarded() || rg.is_discarded());
  std::printf("optimize success: cpu %.4f, cuda %.4f; robust accuracy at 0.05/0.1: cpu %s, cuda %s\n",
              oc["success_rate"].get<double>(), og["success_rate"].get<double>(), rc["robust_accuracy"].dump().c_str(),
              rg["robust_accuracy"].dump().c_str());
  // Float reordering moves trajectories apart, so outcomes are compared as rates: 2 of 64 images, 2 of 32 points.
  EXPECT_NEAR(og["success_rate"].get<double>(), oc["success_rate"].get<double>(), 2.0 / 64 + 1e-9);
  EXPECT_EQ(rg["clean_accuracy"].get<double>(), rc["clean_accuracy"].get<double>());
  for (size_t j = 0; j < 2; ++j)
    EXPECT_NEAR(rg["robust_accuracy"][j].get<double>(), rc["robust_accuracy"][j].get<double>(), 2.0 / 32 + 1e-9);
}

#else

TEST(CudaImportedModel, NeedsACudaBuild) { NUDGE_GPU_SKIP("this build has no CUDA backend (NUDGE_CUDA=OFF)"); }

#endif

}  // namespace
}  // namespace nudge
