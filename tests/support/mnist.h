// The MNIST files for the suites that read them (data/mnist, fetched by data/fetch_mnist.sh and git-ignored): where
// they are, whether they are all there, and REQUIRE_MNIST() to skip a test that needs them.
#pragma once
#include <gtest/gtest.h>

#include <string>

namespace nudge::testing_support {

// NUDGE_SOURCE_DIR/data/mnist.
std::string mnist_dir();

// Whether the four files of the train and test splits (images and labels) are all in mnist_dir().
bool have_mnist();

}  // namespace nudge::testing_support

// Skips the calling test when have_mnist() is false. Use as: REQUIRE_MNIST();
#define REQUIRE_MNIST() \
  if (!::nudge::testing_support::have_mnist()) GTEST_SKIP() << "MNIST not fetched: run data/fetch_mnist.sh"
