// The architecture grammar (host/core/architecture.h): shapes of the windowed layers against the formula
// floor((in + 2p - k) / s) + 1 computed here by hand, the canonical spelling (defaults dropped), and refusals that
// name the bad token.
#include <gtest/gtest.h>

#include <string>

#include "architecture.h"
#include "errors.h"

namespace nudge {
namespace {

std::string refusal(const std::string& text) {
  try {
    Architecture::parse(text);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Architecture, WindowedLayersHaveTheirOutputShapes) {
  const Architecture a =
      Architecture::parse("1x28x28:conv16k4s2p1,relu,conv32k3p1,pool3s2p1,avgpool2,conv8k5p2,avgpool3s1,flatten,dense10");
  ASSERT_EQ(a.layers.size(), 9u);
  EXPECT_EQ(a.layers[0].out, (Shape3{16, 14, 14}));  // (28 + 2 - 4) / 2 + 1
  EXPECT_EQ(a.layers[2].out, (Shape3{32, 14, 14}));  // (14 + 2 - 3) / 1 + 1
  EXPECT_EQ(a.layers[3].out, (Shape3{32, 7, 7}));    // (14 + 2 - 3) / 2 + 1
  EXPECT_EQ(a.layers[4].out, (Shape3{32, 3, 3}));    // (7 - 2) / 2 + 1
  EXPECT_EQ(a.layers[5].out, (Shape3{8, 3, 3}));     // (3 + 4 - 5) / 1 + 1
  EXPECT_EQ(a.layers[6].out, (Shape3{8, 1, 1}));     // (3 - 3) / 1 + 1
  EXPECT_EQ(a.layers[0].stride, 2);
  EXPECT_EQ(a.layers[0].pad, 1);
  EXPECT_EQ(a.layers[3].kind, LayerKind::MaxPool);
  EXPECT_EQ(a.layers[4].kind, LayerKind::AvgPool);
  EXPECT_EQ(a.layers[4].stride, 2);  // a pool's stride defaults to its window
  EXPECT_EQ(a.params()[0].shape, (std::vector<int64_t>{16, 1, 4, 4}));
}

TEST(Architecture, CanonicalSpellingDropsDefaultsAndRoundTrips) {
  const Architecture a = Architecture::parse("1x28x28:conv8k3s1p0,relu,pool2s2p0,avgpool2s2,flatten,dense10");
  EXPECT_EQ(a.to_string(), "1x28x28:conv8k3,relu,pool2,avgpool2,flatten,dense10");
  EXPECT_EQ(a, Architecture::parse("1x28x28:conv8k3,relu,pool2,avgpool2,flatten,dense10"));
  const char* text = "1x28x28:conv16k4s2p1,relu,pool3s2p1,avgpool3s1,flatten,dense10";
  EXPECT_EQ(Architecture::parse(text).to_string(), text);
  // The reference architecture's string is unchanged by the new grammar (its models and the fused kernel key on it).
  EXPECT_EQ(Architecture::reference().to_string(), Architecture::reference_string());
  EXPECT_FALSE(Architecture::parse("1x28x28:conv24k3p1,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10") ==
               Architecture::reference());
}

TEST(Architecture, BadWindowsAreRefusedNamingTheToken) {
  struct Case {
    const char* text;
    const char* says;
  };
  const Case cases[] = {
      {"1x28x28:conv8k3s0,flatten,dense10", "'conv8k3s0' should be"},
      {"1x28x28:conv8k3p1s2,flatten,dense10", "'conv8k3p1s2' should be"},  // letters out of order
      {"1x28x28:conv8k3s2s2,flatten,dense10", "'conv8k3s2s2' should be"},
      {"1x28x28:conv8k3x1,flatten,dense10", "'conv8k3x1' should be"},
      {"1x28x28:avgpool2p1,flatten,dense10", "'avgpool2p1' should be"},
      {"1x28x28:pool2p2,flatten,dense10", "pads more than half its window"},
      {"1x4x4:conv8k7p1,flatten,dense10", "kernel is larger than its 4x4 input with its padding"},
      {"1x4x4:pool4p3,flatten,dense10", "pads more than half"},
      {"1x4x4:avgpool5,flatten,dense10", "leaves nothing"},
      {"1x28x28:pool,flatten,dense10", "'pool' should be"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string msg = refusal(c.text);
    EXPECT_NE(msg.find(c.says), std::string::npos) << msg;
  }
  // A 4x4 map padded by 2 fits a 5x5 max window (pad <= k/2) and gives (4 + 4 - 5) / 1 + 1 = 4.
  EXPECT_EQ(Architecture::parse("1x4x4:pool5s1p2,flatten,dense2").layers[0].out, (Shape3{1, 4, 4}));
}

}  // namespace
}  // namespace nudge
