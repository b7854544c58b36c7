// The CUDA backend's layer-by-layer path against the CPU backend on architectures other than the reference one:
// convolutions with padding and stride, max-pools with overlapping, padded and strided-past windows, average pools,
// a pool as the first layer. Per architecture: predict, input gradients for every loss, the network's whole backward
// pass (logits, dx, every parameter gradient), an image in a batch against the same image alone, and the fused
// path's refusal (its kernel is the reference architecture's alone). Plus, in every CUDA build (GPU or not), fused_path_supports()
// on spellings of the reference architecture and on near misses.
//
// The pattern and the bounds are tests/test_cuda_parity_backend.cpp's: inputs drawn away from decision boundaries
// (clean_images, which follows each layer's Window), tolerances relative to each tensor's scale, ~10x the error of
// compounding per-layer FP32 reordering (~1e-6 of scale per layer; these networks have at most four layers with
// parameters, as the reference one). Pooling adds no error of its own (bit-identical kernels,
// tests/test_cuda_kernels_layers.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "cpu_network.h"
#include "cuda_parity_fixture.h"
#include "cuda_test_util.h"
#include "model.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "cuda_context.h"
#include "cuda_network.h"
#include "fused_chunk.h"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA


// ---- the fused path's choice: no GPU needed ------------------------------------------------------------------------

TEST(FusedPathChoice, OnlyTheReferenceArchitecture) {
  EXPECT_TRUE(cuda::fused_path_supports(Architecture::reference()));
  // The defaults spelled out are the same network, and to_string() writes it the reference's way.
  EXPECT_TRUE(cuda::fused_path_supports(Architecture::parse(
      "1x28x28:conv24k3s1p0,relu,pool2s2p0,conv36k3s1,relu,pool2s2,conv64k3p0,relu,flatten,dense64,relu,dense10")));
  // One suffix away from it: each is another network, which the fused kernel would compute wrongly.
  for (const char* other : {
           "1x28x28:conv24k3p1,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,pool2p1,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,pool2s1,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,avgpool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
           "1x28x28:conv24k3,relu,pool2,conv36k3s2,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10",
       }) {
    SCOPED_TRACE(other);
    const Architecture a = Architecture::parse(other);
    EXPECT_NE(a.to_string(), Architecture::reference().to_string());
    EXPECT_FALSE(cuda::fused_path_supports(a));
  }
}

// ---- the layer path on other architectures -----------------------------------------------------------------------

struct ArchCase {
  const char* name;
  const char* arch;
};
// What GoogleTest and ctest print for the parameter.
void PrintTo(const ArchCase& c, std::ostream* os) { *os << c.arch; }

// Shapes (C x H x W after each layer) in the comments.
const ArchCase kArchitectures[] = {
    // 8x28x28, 8x14x14 (overlapping, padded max-pool), 16x7x7 (k4s2p1), 16x3x3 (avgpool2 drops a row and a column).
    {"PaddedStridedAvg", "1x28x28:conv8k3p1,relu,pool3s2p1,conv16k4s2p1,relu,avgpool2,flatten,dense10"},
    // 6x12x12 (k5s2), 6x5x5 (overlapping avgpool3s2), 10x5x5 ("same" conv), 10x4x4 (stride-1 max-pool), dense12.
    {"StrideOneMaxPool", "1x28x28:conv6k5s2,relu,avgpool3s2,conv10k3p1,relu,pool2s1,flatten,dense12,relu,dense10"},
    // 1x14x14 (a pool as the first layer: dx comes from its backward), 8x12x12, 8x4x4 (pool2s3: rows and columns no
    // window reaches), 4x3x3 (k2p1 stride 2 on a 4x4 map), then 4x2x2 (pool2p1: corner windows of one real pixel).
    {"PoolFirstStrideBeyondWindow",
     "1x28x28:avgpool2,conv8k3,relu,pool2s3,conv4k2s2p1,relu,pool2p1,flatten,dense10"},
};

class CudaLayerPathParity : public test::CudaBackendParity, public ::testing::WithParamInterface<ArchCase> {
 protected:
  Architecture architecture() const override { return Architecture::parse(GetParam().arch); }
};

TEST_P(CudaLayerPathParity, FusedPathRefused) {
  EXPECT_FALSE(cuda::fused_path_supports(model_.arch)) << model_.arch.to_string();
  EXPECT_FALSE(gpu_->path_refusal(OptimizePath::Fused).empty());
  EXPECT_TRUE(gpu_->path_refusal(OptimizePath::Layers).empty());
}

TEST_P(CudaLayerPathParity, Predict) {
  check_predict(200);
}

TEST_P(CudaLayerPathParity, InputGradientAllLosses) {
  check_input_gradient_all_losses(40);
}

// The networks themselves: logits, dx and every parameter gradient (as CudaBackendParity.NetworkForwardBackward).
TEST_P(CudaLayerPathParity, NetworkForwardBackward) {
  check_network_forward_backward(24);
}

// GPU against itself: an image in a batch gives what it gives alone (other batch buckets, other cuDNN algorithms).
TEST_P(CudaLayerPathParity, ImageInBatchMatchesImageAlone) {
  check_image_in_batch(70, {0, 37, 69});
}

INSTANTIATE_TEST_SUITE_P(CudaArchitectures, CudaLayerPathParity, ::testing::ValuesIn(kArchitectures),
                         [](const ::testing::TestParamInfo<ArchCase>& info) { return std::string(info.param.name); });

#else  // !NUDGE_HAVE_CUDA

TEST(CudaLayerPathParity, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
