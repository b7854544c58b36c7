#include "mnist.h"

#include <filesystem>

namespace nudge::testing_support {

std::string mnist_dir() { return std::string(NUDGE_SOURCE_DIR) + "/data/mnist"; }

bool have_mnist() {
  for (const char* f : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"})
    if (!std::filesystem::exists(mnist_dir() + "/" + f)) return false;
  return true;
}

}  // namespace nudge::testing_support
