// The principal-component basis (host/optimize/pca_basis.h), the data-manifold prior of class visualisation:
//   - fit_pca on a constructed set whose mean and covariance are known exactly (pairs m +- s_j q_j along orthonormal
//     q_j): the variances, the vectors (up to the fixed sign rule) and the mean come back to float precision;
//   - the fit refuses k outside [1, D], fewer than 2 images and components beyond the data's rank;
//   - image_of and coefficients_of invert each other inside the box; backward matches central differences of a
//     smooth loss through the clamp, and stops the gradient of clamped pixels;
//   - scaled_l2_decay: its value and gradient against the formula and against differences;
//   - the file form round-trips bit for bit, and hostile files (missing tensors, shapes that disagree, NaN, a
//     negative or increasing variance, a vector not of unit length) are refused with InputError;
//   - pca_sample_image is a pure function of (seed, index), draws only the first m components, and its
//     coefficients have the basis' variances;
//   - the chunk's PCA parametrisation: one SGD step moves the coefficients by lr times V (dL/dx) plus the prior's
//     gradient, read back from the reported image.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cpu_backend.h"
#include "errors.h"
#include "model.h"
#include "pca_basis.h"
#include "regularized_chunk.h"
#include "regularizers.h"
#include "safetensors.h"
#include "start_images.h"

namespace nudge {
namespace {

namespace fs = std::filesystem;

// Orthonormal rows q_0..q_{k-1} in R^D by Gram-Schmidt on random vectors (double).
std::vector<std::vector<double>> orthonormal(int k, int D, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0, 1);
  std::vector<std::vector<double>> q;
  while (static_cast<int>(q.size()) < k) {
    std::vector<double> v(D);
    for (double& x : v) x = n(rng);
    for (const auto& u : q) {
      double d = 0;
      for (int p = 0; p < D; ++p) d += u[p] * v[p];
      for (int p = 0; p < D; ++p) v[p] -= d * u[p];
    }
    double norm = 0;
    for (double x : v) norm += x * x;
    norm = std::sqrt(norm);
    for (double& x : v) x /= norm;
    q.push_back(v);
  }
  return q;
}

// The images m + s_j q_j and m - s_j q_j for each j: their mean is m and their covariance
// sum_j 2 s_j^2 q_j q_j^T / (n - 1) with n = 2k, so the eigenpairs are (2 s_j^2 / (n - 1), q_j) exactly.
struct KnownSet {
  int D, k;
  std::vector<float> images, mean;
  std::vector<std::vector<double>> q;
  std::vector<double> variances;
};

KnownSet known_set(int D, const std::vector<double>& s) {
  KnownSet ks{D, static_cast<int>(s.size()), {}, std::vector<float>(D), orthonormal(static_cast<int>(s.size()), D, 3), {}};
  for (int p = 0; p < D; ++p) ks.mean[p] = 0.5f + 0.01f * static_cast<float>(p % 7);
  const double n = 2.0 * ks.k;
  for (int j = 0; j < ks.k; ++j) {
    for (double sign : {1.0, -1.0})
      for (int p = 0; p < D; ++p) ks.images.push_back(static_cast<float>(ks.mean[p] + sign * s[j] * ks.q[j][p]));
    ks.variances.push_back(2 * s[j] * s[j] / (n - 1));
  }
  return ks;
}

TEST(PcaBasis, FitRecoversAKnownMeanCovarianceAndSignRule) {
  const std::vector<double> s = {0.4, 0.3, 0.2, 0.1};
  const KnownSet ks = known_set(24, s);
  const PcaBasis b = fit_pca(ks.images.data(), 2 * ks.k, ks.D, 3);
  ASSERT_EQ(b.components, 3);
  ASSERT_EQ(b.pixels, 24);
  // All of the set's variance lies along the four q_j: the total is their sum.
  EXPECT_NEAR(b.total_variance, ks.variances[0] + ks.variances[1] + ks.variances[2] + ks.variances[3],
              1e-5 * ks.variances[0]);
  // The images are floats: each carries a relative rounding of 2^-24 ~ 6e-8 per pixel, which perturbs the mean and
  // the covariance by about that much relative to the pixel scale (0.5) against variances >= 0.0057: 1e-5 leaves room.
  for (int p = 0; p < ks.D; ++p) EXPECT_NEAR(b.mean[p], ks.mean[p], 1e-6) << "pixel " << p;
  for (int j = 0; j < 3; ++j) {
    EXPECT_NEAR(b.variances[j], ks.variances[j], 1e-5 * ks.variances[0]) << "component " << j;
    double dot = 0;
    int big = 0;
    for (int p = 0; p < ks.D; ++p) {
      dot += b.vectors[static_cast<size_t>(j) * ks.D + p] * ks.q[j][p];
      if (std::fabs(b.vectors[static_cast<size_t>(j) * ks.D + p]) > std::fabs(b.vectors[static_cast<size_t>(j) * ks.D + big])) big = p;
    }
    EXPECT_NEAR(std::fabs(dot), 1.0, 1e-5) << "component " << j << " is q_" << j;
    EXPECT_GT(b.vectors[static_cast<size_t>(j) * ks.D + big], 0.0f) << "sign rule: the largest entry is positive";
  }
}

TEST(PcaBasis, FitRefusesImpossibleRequests) {
  const KnownSet ks = known_set(10, {0.3, 0.2});
  EXPECT_THROW(fit_pca(ks.images.data(), 4, 10, 0), InputError);
  EXPECT_THROW(fit_pca(ks.images.data(), 4, 10, 11), InputError);
  EXPECT_THROW(fit_pca(ks.images.data(), 1, 10, 1), InputError);
  // Two directions of variance: a third component would be noise of size 1e-17, not data.
  EXPECT_THROW(fit_pca(ks.images.data(), 4, 10, 3), InputError);
  EXPECT_NO_THROW(fit_pca(ks.images.data(), 4, 10, 2));
}

PcaBasis small_basis() {
  const KnownSet ks = known_set(36, {0.5, 0.4, 0.3, 0.2, 0.1});
  return fit_pca(ks.images.data(), 2 * ks.k, ks.D, 5);
}

TEST(PcaBasis, ImageAndCoefficientsInvertEachOtherInsideTheBox) {
  const PcaBasis b = small_basis();
  const std::vector<float> c = {0.1f, -0.05f, 0.08f, 0.02f, -0.03f};
  std::vector<float> x(b.pixels), back(b.components);
  b.image_of(c.data(), x.data());
  for (float v : x) ASSERT_TRUE(v > 0 && v < 1) << "the test wants no clamping";
  b.coefficients_of(x.data(), back.data());
  // Orthonormal rows in float: the round trip costs a few ulps of the pixel scale per product.
  for (int j = 0; j < b.components; ++j) EXPECT_NEAR(back[j], c[j], 1e-5) << j;
}

TEST(PcaBasis, BackwardMatchesDifferencesAndStopsAtTheClamp) {
  const PcaBasis b = small_basis();
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.5f, 1.5f);
  std::vector<float> w(b.pixels);
  for (float& v : w) v = u(rng);
  // L(x) = sum_p w_p x_p^2 / 2, smooth; dL/dx = w x.
  auto loss = [&](const std::vector<float>& c) {
    std::vector<float> x(b.pixels);
    b.image_of(c.data(), x.data());
    double s = 0;
    for (int p = 0; p < b.pixels; ++p) s += 0.5 * w[p] * x[p] * x[p];
    return s;
  };
  // Large coefficients: many pixels clamp at 0 or 1, so the stopped gradient matters.
  const std::vector<float> c = {1.2f, -0.9f, 0.7f, 0.4f, -0.6f};
  std::vector<float> x(b.pixels), gx(b.pixels), gc(b.components);
  b.image_of(c.data(), x.data());
  int clamped = 0;
  for (int p = 0; p < b.pixels; ++p) {
    gx[p] = w[p] * x[p];
    clamped += x[p] == 0.0f || x[p] == 1.0f;
  }
  ASSERT_GT(clamped, 3) << "the case must clamp some pixels";
  b.backward(c.data(), gx.data(), gc.data());
  // Central differences with h = 1e-3: the truncation error is zero for a quadratic away from the kinks; the float
  // loss (36 terms of size ~1) carries ~1e-6 absolute error, / 2h = 5e-4. A kink inside [c - h, c + h] would break
  // it; the case is checked to have none by comparing with h / 2 as well.
  for (int j = 0; j < b.components; ++j) {
    for (float h : {1e-3f, 5e-4f}) {
      std::vector<float> up = c, down = c;
      up[j] += h;
      down[j] -= h;
      const double fd = (loss(up) - loss(down)) / (static_cast<double>(up[j]) - down[j]);
      EXPECT_NEAR(fd, gc[j], 2e-3 + 1e-3 * std::fabs(gc[j])) << "component " << j << " h " << h;
    }
  }
  // Pixels clamped at 1 carry a nonzero dL/dx (w x = w there): passing it through would change the answer, so the
  // differences above do check the stop.
  std::vector<float> raw(b.mean);
  for (int j = 0; j < b.components; ++j)
    for (int p = 0; p < b.pixels; ++p) raw[p] += c[j] * b.vectors[static_cast<size_t>(j) * b.pixels + p];
  double unmasked_change = 0;
  for (int j = 0; j < b.components; ++j) {
    double stopped = 0;
    for (int p = 0; p < b.pixels; ++p)
      if (raw[p] > 1) stopped += b.vectors[static_cast<size_t>(j) * b.pixels + p] * gx[p];
    unmasked_change = std::max(unmasked_change, std::fabs(stopped));
  }
  EXPECT_GT(unmasked_change, 1e-2) << "the case must stop a gradient the differences can see";
}

TEST(PcaBasis, ScaledL2DecayValueAndGradient) {
  const std::vector<float> c = {0.5f, -1.0f, 2.0f}, center = {0.1f, 0.2f, -0.3f}, var = {4.0f, 1.0f, 0.25f};
  std::vector<float> g(3, 1.0f);  // added to, not overwritten
  const float v = scaled_l2_decay(c.data(), center.data(), var.data(), 3, 0.5f, g.data());
  double want = 0;
  for (int j = 0; j < 3; ++j) {
    const double d = c[j] - center[j];
    want += 0.5 * d * d / var[j];
    EXPECT_NEAR(g[j], 1.0 + 0.5 * d / var[j], 1e-6) << j;
  }
  EXPECT_NEAR(v, 0.5 * want, 1e-6);
  std::vector<float> g0(3, 0.0f);
  scaled_l2_decay(c.data(), nullptr, var.data(), 3, 1.0f, g0.data());
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(g0[j], c[j] / var[j], 1e-6) << "center null is 0";
  // Central differences of the value (a quadratic: exact but for float rounding of ~1e-6 / 2h).
  for (int j = 0; j < 3; ++j) {
    std::vector<float> up = c, down = c;
    up[j] += 1e-2f;
    down[j] -= 1e-2f;
    const double fd = (scaled_l2_decay(up.data(), center.data(), var.data(), 3, 0.5f, nullptr) -
                       scaled_l2_decay(down.data(), center.data(), var.data(), 3, 0.5f, nullptr)) /
                      (static_cast<double>(up[j]) - down[j]);
    EXPECT_NEAR(fd, g[j] - 1.0, 1e-3) << j;
  }
}

class TempFile {
 public:
  explicit TempFile(const std::string& name)
      : path_((fs::temp_directory_path() / ("nudge_pca_" + std::to_string(::getpid()) + "_" + name)).string()) {}
  ~TempFile() { fs::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(PcaBasis, FileRoundTripsAndHostileFilesAreRefused) {
  PcaBasis b = small_basis();
  b.source = "constructed";
  TempFile t("ok.safetensors");
  write_pca_basis(t.path(), b);
  const PcaBasis r = read_pca_basis(t.path());
  EXPECT_EQ(r.pixels, b.pixels);
  EXPECT_EQ(r.components, b.components);
  EXPECT_EQ(r.mean, b.mean);
  EXPECT_EQ(r.vectors, b.vectors);
  EXPECT_EQ(r.variances, b.variances);
  EXPECT_EQ(r.source, "constructed");

  struct Bad {
    const char* what;
    std::function<void(SafetensorsFile&)> spoil;
  };
  const Bad cases[] = {
      {"no variances", [](SafetensorsFile& f) { f.tensors.pop_back(); }},
      {"vectors of the wrong width",
       [&](SafetensorsFile& f) {
         f.tensors[1].second.shape = {b.components * 2, b.pixels / 2};
       }},
      {"a NaN in the mean", [](SafetensorsFile& f) { f.tensors[0].second.data[3] = std::nanf(""); }},
      {"a negative variance", [](SafetensorsFile& f) { f.tensors[2].second.data.back() = -0.1f; }},
      {"increasing variances", [](SafetensorsFile& f) { std::swap(f.tensors[2].second.data[0], f.tensors[2].second.data[1]); }},
      {"a vector of length 2", [&](SafetensorsFile& f) {
         for (int p = 0; p < b.pixels; ++p) f.tensors[1].second.data[p] *= 2;
       }},
  };
  for (const Bad& c : cases) {
    SafetensorsFile f = pca_basis_file(b);
    c.spoil(f);
    EXPECT_THROW(parse_pca_basis(serialize_safetensors(f), c.what), InputError) << c.what;
  }
  EXPECT_THROW(parse_pca_basis("not a safetensors file", "text"), InputError);
}

TEST(PcaBasis, SamplesArePureDrawOnlyTheirComponentsAndHaveTheVariances) {
  const PcaBasis b = small_basis();
  std::vector<float> x(b.pixels), y(b.pixels), c(b.components);
  pca_sample_image(b, 7, 11, 5, x.data());
  pca_sample_image(b, 7, 11, 5, y.data());
  EXPECT_EQ(x, y) << "a pure function of (seed, index)";
  pca_sample_image(b, 7, 12, 5, y.data());
  EXPECT_NE(x, y);
  // m = 2: only the first two coefficients are drawn (the image stays inside the box for this basis' scale).
  pca_sample_image(b, 7, 11, 2, x.data());
  b.coefficients_of(x.data(), c.data());
  for (int j = 2; j < b.components; ++j) EXPECT_NEAR(c[j], 0.0f, 1e-5) << j;
  // Over many draws each coefficient's variance is the basis' (where nothing clamps): 4,000 draws give a relative
  // standard error of sqrt(2 / 4000) = 2.2%; 10% is more than four of those.
  const int n = 4000;
  std::vector<double> sum2(b.components, 0.0);
  for (int i = 0; i < n; ++i) {
    pca_sample_image(b, 3, i, b.components, x.data());
    b.coefficients_of(x.data(), c.data());
    for (int j = 0; j < b.components; ++j) sum2[j] += static_cast<double>(c[j]) * c[j];
  }
  for (int j = 0; j < b.components; ++j)
    EXPECT_NEAR(sum2[j] / n, b.variances[j], 0.1 * b.variances[j]) << "component " << j;
}

TEST(PcaChunk, OneSgdStepMovesTheCoefficientsByTheProjectedGradientAndThePrior) {
  // A 28x28 basis fitted on gray-ish noise, so that start images project inside the box.
  constexpr int kD = 784, kK = 10, kN = 3;
  std::vector<float> data(static_cast<size_t>(200) * kD);
  for (int i = 0; i < 200; ++i) noise_image(4, i, kD, data.data() + static_cast<size_t>(i) * kD);
  for (float& v : data) v = 0.4f + 0.2f * v;
  auto basis = std::make_shared<PcaBasis>(fit_pca(data.data(), 200, kD, 8));
  const Model m = Model::glorot(Architecture::parse("1x28x28:flatten,dense16,relu,dense10"), 8);
  auto backend = make_cpu_backend();
  backend->load_model(m);
  std::vector<float> start(data.begin() + 10 * kD, data.begin() + (10 + kN) * kD), dist(kN * kK, 0.0f);
  std::vector<int32_t> kind(kN, static_cast<int32_t>(TargetKind::OneHot)), cls(kN);
  for (int i = 0; i < kN; ++i) {
    cls[i] = i + 2;
    dist[i * kK + cls[i]] = 1.0f;
  }
  ChunkInput in;
  in.n = kN;
  in.start = start.data();
  in.target_dist = dist.data();
  in.target_kind = kind.data();
  in.target_class = cls.data();
  StepConfig cfg;
  cfg.optimizer = InputOptimizer::Sgd;
  cfg.lr = 0.05f;
  cfg.stop_prob = 1e-30f;  // with settle_steps = 1 the reported iterate is the one after the first update
  RegularizerConfig reg;
  reg.pca = basis;
  reg.pca_prior = 0.3f;
  reg.pca_anchor = 0.7f;  // zero gradient at the start, whose coefficients are the anchor
  reg.settle_steps = 1;
  // What the chunk starts from: the projection of each start, and the image the model sees.
  std::vector<float> c0(static_cast<size_t>(kN) * 8), x0(start.size()), probs(kN * kK), loss(kN), grad(start.size());
  for (int i = 0; i < kN; ++i) {
    basis->coefficients_of(start.data() + i * kD, c0.data() + i * 8);
    basis->image_of(c0.data() + i * 8, x0.data() + i * kD);
  }
  backend->input_gradient(x0.data(), kN, dist.data(), kind.data(), cls.data(), LossKind::CrossEntropy, 0.0f,
                          probs.data(), loss.data(), grad.data());
  auto chunk = make_regularized_chunk({backend.get()}, 28, 28, kK, in, cfg, reg, 1, 0);
  chunk->step();
  const ChunkResult r = chunk->finish();
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(r.success_step[i], 1);
    std::vector<float> gc(8), c1(8);
    basis->backward(c0.data() + i * 8, grad.data() + i * kD, gc.data());
    for (int j = 0; j < 8; ++j) gc[j] += reg.pca_prior * c0[i * 8 + j] / basis->variances[j];
    basis->coefficients_of(r.best_images.data() + i * kD, c1.data());
    double worst = 0, scale = 0;
    for (int j = 0; j < 8; ++j) {
      const double applied = (static_cast<double>(c0[i * 8 + j]) - c1[j]) / cfg.lr;
      worst = std::max(worst, std::fabs(applied - gc[j]));
      scale = std::max(scale, std::fabs(static_cast<double>(gc[j])));
    }
    ASSERT_GT(scale, 1e-3) << "a step to measure";
    // Reading c1 back through image and projection costs ~1e-6 per coefficient (float sums of 784 terms), / lr.
    EXPECT_LT(worst, 1e-3 * scale + 1e-4) << "image " << i;
  }
}

}  // namespace
}  // namespace nudge
