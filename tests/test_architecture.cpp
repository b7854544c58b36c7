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

TEST(Architecture, BatchNormAndDropoutParseWithTheirTensors) {
  const Architecture a = Architecture::parse(
      "1x28x28:conv8k3p1,bn,relu,pool2,dropout0.250,flatten,dense32,bn,relu,dropout0.5,dense10");
  // Canonical: P without trailing zeros.
  EXPECT_EQ(a.to_string(), "1x28x28:conv8k3p1,bn,relu,pool2,dropout0.25,flatten,dense32,bn,relu,dropout0.5,dense10");
  EXPECT_EQ(a, Architecture::parse(a.to_string()));
  EXPECT_TRUE(a.has_training_layers());
  EXPECT_TRUE(a.has_batch_norm());
  EXPECT_EQ(a.layers[1].kind, LayerKind::BatchNorm);
  EXPECT_EQ(a.layers[1].name, "bn1");
  EXPECT_EQ(a.layers[1].out, (Shape3{8, 28, 28}));
  EXPECT_EQ(a.layers[4].kind, LayerKind::Dropout);
  EXPECT_EQ(a.layers[4].drop_ppm, 250000);
  EXPECT_EQ(a.layers[4].drop_probability(), 0.25f);
  EXPECT_EQ(a.layers[7].name, "bn2");
  // bnN.weight, bias (trained) and running_mean, running_var (buffers), each [C]: PyTorch's state_dict names.
  const auto p = a.params();
  ASSERT_EQ(p.size(), 2u + 4 + 2 + 4 + 2);
  const char* names[] = {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                         "dense1.weight", "dense1.bias", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var",
                         "dense2.weight", "dense2.bias"};
  for (size_t i = 0; i < p.size(); ++i) EXPECT_EQ(p[i].name, names[i]);
  EXPECT_EQ(p[2].shape, (std::vector<int64_t>{8}));
  EXPECT_EQ(p[10].shape, (std::vector<int64_t>{32}));
  EXPECT_TRUE(p[4].is_buffer && p[5].is_buffer && !p[2].is_buffer && !p[3].is_buffer);
  EXPECT_TRUE(p[3].is_bias);
  EXPECT_EQ(p[2].init, ParamInit::One);
  EXPECT_EQ(p[5].init, ParamInit::One);
  EXPECT_EQ(p[4].init, ParamInit::Zero);
  EXPECT_FALSE(Architecture::reference().has_training_layers());
  // Dropout anywhere, even first; P with 6 decimals.
  EXPECT_EQ(Architecture::parse("1x4x4:dropout0.000001,flatten,dense2").layers[0].drop_ppm, 1);
  EXPECT_EQ(Architecture::parse("1x4x4:flatten,dropout0.999999,dense2").to_string(), "1x4x4:flatten,dropout0.999999,dense2");
}

TEST(Architecture, BadBatchNormAndDropoutAreRefusedNamingTheToken) {
  struct Case {
    const char* text;
    const char* says;
  };
  const Case cases[] = {
      {"1x28x28:bn,conv8k3,flatten,dense10", "'bn' must come right after a conv or dense layer (it is folded into that layer for inference); here it is the first layer"},
      {"1x28x28:conv8k3,relu,bn,flatten,dense10", "here it follows 'relu'"},
      {"1x28x28:conv8k3,pool2,bn,flatten,dense10", "here it follows 'pool2'"},
      {"1x28x28:conv8k3,bn,bn,flatten,dense10", "here it follows 'bn'"},
      {"1x28x28:conv8k3,dropout0.5,bn,flatten,dense10", "here it follows 'dropout0.5'"},
      {"1x28x28:conv8k3,flatten,bn,dense10", "here it follows 'flatten'"},
      {"1x28x28:conv8k3,flatten,dense10,bn", "the last layer must be dense"},
      {"1x28x28:flatten,dropout,dense10", "'dropout' should be dropoutP with P the drop probability"},
      {"1x28x28:flatten,dropout0,dense10", "'dropout0' should be dropoutP"},
      {"1x28x28:flatten,dropout0.0,dense10", "'dropout0.0' should be dropoutP"},
      {"1x28x28:flatten,dropout1,dense10", "'dropout1' should be dropoutP"},
      {"1x28x28:flatten,dropout1.0,dense10", "'dropout1.0' should be dropoutP"},
      {"1x28x28:flatten,dropout1.5,dense10", "'dropout1.5' should be dropoutP"},
      {"1x28x28:flatten,dropout.5,dense10", "'dropout.5' should be dropoutP"},
      {"1x28x28:flatten,dropout-0.5,dense10", "'dropout-0.5' should be dropoutP"},
      {"1x28x28:flatten,dropout0.1234567,dense10", "'dropout0.1234567' should be dropoutP"},
      {"1x28x28:flatten,dropout0.5x,dense10", "'dropout0.5x' should be dropoutP"},
      {"1x28x28:flatten,dropout0.,dense10", "'dropout0.' should be dropoutP"},
      {"1x28x28:flatten,batchnorm,dense10", "unknown layer 'batchnorm' (known: convFkK[sS][pP], relu, poolK[sS][pP], avgpoolK[sS], flatten, denseN, bn, dropoutP)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string msg = refusal(c.text);
    EXPECT_NE(msg.find(c.says), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace nudge
