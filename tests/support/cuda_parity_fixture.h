// Fixtures of the CUDA-vs-CPU parity suites (tests/test_cuda_parity_*.cpp): a model (the reference architecture
// unless told otherwise) with random biases, images drawn away from every decision boundary of the CPU forward pass
// (ReLU kinks, max-pool near-ties, logit near-ties), and CudaBackendParity, which holds a CPU and a CUDA backend
// loaded with the same model.
//
// Why away from ties: FP32 rounding differs between OpenBLAS and cuDNN/cuBLAS, and at a boundary such a difference
// flips a decision and moves a gradient by O(1), which would be a property of the inputs, not a bug.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "cuda_test_util.h"
#include "model.h"

namespace nudge::test {

#if NUDGE_HAVE_CUDA

// A model of `arch` with Glorot weights and small random biases (Glorot's zero biases would leave the bias paths
// untested).
Model test_model(uint64_t seed, const Architecture& arch = Architecture::reference());

// Whether every decision in the CPU forward pass of image x is at least `margin` (relative to its layer's scale)
// from a tie: ReLU inputs away from 0, each max-pool window's maximum ahead of the runner-up (exact zeros from a
// ReLU tie identically on both sides), and the logits pairwise apart (argmax, and Carlini-Wagner's best other
// class). Any architecture: max-pool windows as the layer's Window places them (padding never a candidate); average
// pools and flatten decide nothing.
bool away_from_ties(const Model& m, const float* x, double margin);

// n images uniform in [0,1) whose decisions are 1e-5 of scale from any tie (~10x the FP32 disagreement).
std::vector<float> clean_images(const Model& m, int n, std::mt19937_64& rng);

double max_abs(const std::vector<float>& v);

// A tolerance relative to a tensor's scale: atol = c * max|ref| (small elements of a gradient are sums with
// cancellation, whose rounding scales with the terms, not the result), rtol 1e-4.
Tolerance scaled(const std::vector<float>& ref, double c);

// A CPU and a CUDA backend loaded with test_model(seed, architecture()), the seed drawn from the run's seed
// (test_seed()) and the test's name; skips without a usable device.
class CudaBackendParity : public ::testing::Test {
 protected:
  void SetUp() override;
  // The model's architecture; suites on other architectures override it.
  virtual Architecture architecture() const { return Architecture::reference(); }

  // Mixed targets: one-hot, soft (with zeros) and untargeted, entries cycling through the kinds.
  void make_targets(int n, std::vector<float>* dist, std::vector<int32_t>* kind, std::vector<int32_t>* cls);

  // The checks every parity suite runs on its architecture (tests/support/cuda_parity_checks.cpp), on n clean
  // images: predict; input gradients for every loss; the networks' forward and whole backward pass, every parameter
  // gradient, through guarded buffers; and the GPU against itself, `images` of a batch of n against each alone.
  void check_predict(int n);
  void check_input_gradient_all_losses(int n);
  void check_network_forward_backward(int n);
  void check_image_in_batch(int n, const std::vector<int>& images);

  std::mt19937_64 rng_;
  Model model_;
  std::unique_ptr<Backend> cpu_, gpu_;
  int D_ = 0, K_ = 0;
};

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
