// The CPU backend's hand-vectorised kernels (host/cpu/cpu_isa.h) on every instruction set this CPU has.
//
// column_gemm (host/cpu/column_gemm.h) on seeded random shapes that hit every tile and tail: M 1..13 (row tiles of 6
// and every remainder), N across the panel widths of each instruction set (1, 2, 8 and 16 lanes, 2 vectors),
// K from 0 to 300, strided and transposed A, B rows in any order, several column segments, both biases, ReLU.
//
// Two checks per case, on every instruction set this CPU supports:
// - Exact: the result equals, bit for bit, the computation the header specifies, done here with std::fma one element
//   at a time. This is principled equality, not a tolerance taken to zero: the vector kernels promise the same
//   correctly rounded operations in the same order, and that promise is what makes each image's result independent of
//   the images beside it. Dropped columns and everything outside the kept elements must not be written.
// - Against the exact answer in double: |got - exact| <= gamma_(K+1) * (sum_k |a_k b_k| + |bias|), the standard bound
//   for K+1 sequential roundings (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), gamma_n = n u/(1-n u),
//   u = 2^-24. This is what catches a wrong index that the first check would reproduce.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "column_gemm.h"
#include "cli_sandbox.h"
#include "cpu_layers.h"
#include "cpu_network.h"
#include "errors.h"
#include "layers_isa.h"
#include "pool_math.h"
#include "model.h"
#include "reference_math.h"

namespace nudge {
namespace {

using cpu::ColumnGemm;
using cpu::CpuIsa;

constexpr float kPoison = -12345.0f;

struct Case {
  int M, N, K;
  bool transposed_a;   // A(m,k) = a[k*M + m] instead of a[m*K + k]
  bool shuffled_rows;  // B's rows in a random order in memory
  int seg_period, seg_len;  // 0: one plain segment
  int bias;                 // 0 none, 1 row, 2 column
  bool relu;
};

struct Problem {
  ColumnGemm g;
  std::vector<float> a, b, row_bias, col_bias;
  std::vector<std::ptrdiff_t> rows;
  int bias = 0;
  size_t c_size = 0;
};

Problem make_problem(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Problem p;
  ColumnGemm& g = p.g;
  g.M = c.M;
  g.N = c.N;
  g.K = c.K;
  p.a.resize(static_cast<size_t>(c.M) * std::max(c.K, 1));
  for (float& v : p.a) v = u(rng);
  g.a_row = c.transposed_a ? 1 : c.K;
  g.a_col = c.transposed_a ? c.M : 1;
  // Each B row is N floats plus a gap, so a read past a row's end lands on a poisoned value.
  const int ldb = c.N + 3;
  p.b.assign(static_cast<size_t>(std::max(c.K, 1)) * ldb, 1e30f);
  std::vector<int> order(c.K);
  for (int k = 0; k < c.K; ++k) order[k] = k;
  if (c.shuffled_rows) std::shuffle(order.begin(), order.end(), rng);
  for (int k = 0; k < c.K; ++k) {
    p.rows.push_back(static_cast<std::ptrdiff_t>(order[k]) * ldb);
    for (int n = 0; n < c.N; ++n) p.b[p.rows[k] + n] = u(rng);
  }
  if (c.seg_period) {
    g.seg_period = c.seg_period;
    g.seg_len = c.seg_len;
  } else {
    g.seg_period = g.seg_len = c.N;
  }
  const int segments = (c.N + g.seg_period - 1) / g.seg_period;
  g.c_row = g.seg_len * segments + 2;  // a gap after every row
  g.seg_stride = g.seg_len;
  p.c_size = static_cast<size_t>(c.M) * g.c_row;
  p.row_bias.resize(c.M);
  p.col_bias.resize(g.seg_len);
  for (float& v : p.row_bias) v = u(rng);
  for (float& v : p.col_bias) v = u(rng);
  g.relu = c.relu;
  p.bias = c.bias;
  return p;
}

// The problem's product with its pointers into p (set after p has reached its place) and output c.
ColumnGemm bound(const Problem& p, float* c) {
  ColumnGemm g = p.g;
  g.a = p.a.data();
  g.b = p.b.data();
  g.b_rows = p.rows.data();
  g.row_bias = p.bias == 1 ? p.row_bias.data() : nullptr;
  g.col_bias = p.bias == 2 ? p.col_bias.data() : nullptr;
  g.c = c;
  return g;
}

float a_at(const Problem& p, int m, int k) { return p.a[m * p.g.a_row + k * p.g.a_col]; }
float b_at(const Problem& p, int k, int n) { return p.b[p.rows[k] + n]; }

// The header's computation, one element at a time; kPoison where nothing may be written.
std::vector<float> specified(const Problem& p) {
  const ColumnGemm& g = p.g;
  std::vector<float> c(p.c_size, kPoison);
  for (int m = 0; m < g.M; ++m)
    for (int n = 0; n < g.N; ++n) {
      const int s = n / g.seg_period, j = n % g.seg_period;
      if (j >= g.seg_len) continue;
      float acc = 0.0f;
      for (int k = 0; k < g.K; ++k) acc = std::fma(a_at(p, m, k), b_at(p, k, n), acc);
      float v = acc;
      if (p.bias == 1) v = v + p.row_bias[m];
      if (p.bias == 2) v = v + p.col_bias[j];
      if (g.relu) v = v > 0 ? v : 0.0f;
      c[m * g.c_row + s * g.seg_stride + j] = v;
    }
  return c;
}

void expect_within_rounding_bound(const Problem& p, const std::vector<float>& c, const std::string& what) {
  const ColumnGemm& g = p.g;
  const double u = std::ldexp(1.0, -24), n = g.K + 1, gamma = n * u / (1 - n * u);
  int bad = 0;
  for (int m = 0; m < g.M; ++m)
    for (int col = 0; col < g.N; ++col) {
      const int s = col / g.seg_period, j = col % g.seg_period;
      if (j >= g.seg_len) continue;
      double exact = 0, mass = 0;
      for (int k = 0; k < g.K; ++k) {
        const double t = static_cast<double>(a_at(p, m, k)) * b_at(p, k, col);
        exact += t;
        mass += std::fabs(t);
      }
      const double bias = p.bias == 1 ? p.row_bias[m] : p.bias == 2 ? p.col_bias[j] : 0.0;
      exact += bias;
      mass += std::fabs(bias);
      if (g.relu) exact = std::max(exact, 0.0);
      const double got = c[m * g.c_row + s * g.seg_stride + j];
      if (std::fabs(got - exact) > gamma * mass && ++bad <= 3)
        ADD_FAILURE() << what << ": C(" << m << "," << col << ") = " << got << ", exact " << exact << ", bound "
                      << gamma * mass;
    }
}

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512})
    if (cpu::cpu_isa_supported(isa)) out.push_back(isa);
  return out;
}

std::string name_of(const Case& c) {
  return "M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
         (c.transposed_a ? " A^T" : "") + (c.shuffled_rows ? " shuffled" : "") +
         (c.seg_period ? " seg " + std::to_string(c.seg_len) + "/" + std::to_string(c.seg_period) : "") +
         (c.bias == 1 ? " row-bias" : c.bias == 2 ? " col-bias" : "") + (c.relu ? " relu" : "");
}

TEST(ColumnGemm, EveryInstructionSetComputesTheSpecifiedSumsBitForBit) {
  std::vector<Case> cases;
  std::mt19937 rng(77);
  for (int M : {1, 2, 5, 6, 7, 12, 13})
    for (int N : {1, 3, 8, 9, 16, 17, 31, 32, 33, 47, 70}) {
      const int K = std::uniform_int_distribution<int>(1, 40)(rng);
      const int mode = std::uniform_int_distribution<int>(0, 3)(rng);
      Case c{M, N, K, (mode & 1) != 0, (mode & 2) != 0, 0, 0, static_cast<int>((M + N) % 3), (M * N) % 2 == 0};
      if (c.bias != 2 && N > 4 && mode >= 2) {  // several segments, some columns dropped
        c.seg_period = std::uniform_int_distribution<int>(2, std::min(N, 13))(rng);
        c.seg_len = std::uniform_int_distribution<int>(1, c.seg_period)(rng);
      }
      cases.push_back(c);
    }
  cases.push_back(Case{36, 141, 216, false, true, 13, 11, 1, true});  // conv2 of the reference model, direct
  cases.push_back(Case{216, 300, 36, true, false, 0, 0, 0, false});   // its backward data
  cases.push_back(Case{7, 64, 300, false, false, 0, 0, 2, true});     // a dense layer
  cases.push_back(Case{4, 10, 0, false, false, 0, 0, 1, true});       // K = 0: bias and ReLU only
  uint32_t seed = 100;
  for (const Case& c : cases) {
    const Problem p = make_problem(c, ++seed);
    const std::vector<float> want = specified(p);
    expect_within_rounding_bound(p, want, name_of(c));
    for (CpuIsa isa : supported_isas()) {
      SCOPED_TRACE(std::string(cpu::cpu_isa_name(isa)) + " " + name_of(c));
      std::vector<float> got(p.c_size, kPoison);
      cpu::column_gemm(bound(p, got.data()), isa);
      ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
          << "differs from the specified computation (or wrote a dropped column or a gap)";
    }
  }
}

TEST(ColumnGemm, ABatchIsItsItemsOneByOne) {
  const Case c{9, 40, 25, false, false, 10, 7, 1, true};
  const Problem p = make_problem(c, 4242);
  const int items = 3;
  // Item i reads b shifted by i*b_batch: one long buffer of three problems' B.
  std::vector<float> b_all;
  for (int i = 0; i < items; ++i) {
    std::vector<float> shifted = p.b;
    for (float& v : shifted) v = v * (i + 1) - 0.25f * i;
    b_all.insert(b_all.end(), shifted.begin(), shifted.end());
  }
  std::vector<float> batched(p.c_size * items, kPoison);
  ColumnGemm g = bound(p, batched.data());
  g.b = b_all.data();
  g.batch = items;
  g.b_batch = static_cast<std::ptrdiff_t>(p.b.size());
  g.c_batch = static_cast<std::ptrdiff_t>(p.c_size);
  cpu::column_gemm(g);
  for (int i = 0; i < items; ++i) {
    std::vector<float> alone(p.c_size, kPoison);
    ColumnGemm one = bound(p, alone.data());
    one.b = b_all.data() + i * p.b.size();
    cpu::column_gemm(one);
    EXPECT_EQ(0, std::memcmp(alone.data(), batched.data() + i * p.c_size, p.c_size * sizeof(float))) << "item " << i;
  }
}

TEST(ColumnGemm, RefusesAnInconsistentColumnLayout) {
  Problem p = make_problem(Case{2, 10, 3, false, false, 4, 3, 0, false}, 5);
  std::vector<float> c(p.c_size);
  ColumnGemm g = bound(p, c.data());
  g.col_bias = p.col_bias.data();  // a column bias needs one segment
  EXPECT_THROW(cpu::column_gemm(g), InternalError);
  g.col_bias = nullptr;
  g.seg_len = 5;  // longer than the period
  EXPECT_THROW(cpu::column_gemm(g), InternalError);
}

// What the kernels promise the network: a fused ReLU is ReLU of the layer, and an image gives the same bits alone as
// in a batch, forward and backward, on the reference architecture (direct convolutions for conv1 and conv2, im2col for
// conv3's 3x3 map) and on padded and strided windows.
TEST(ColumnGemm, LayersAreExactlyPerImageAndFuseReluExactly) {
  struct ConvShape {
    Shape3 in;
    int K;
    Window win;
  };
  uint32_t seed = 900;
  for (const ConvShape& s : {ConvShape{{1, 28, 28}, 24, {3, 1, 0}}, ConvShape{{24, 13, 13}, 36, {3, 1, 0}},
                             ConvShape{{36, 5, 5}, 64, {3, 1, 0}}, ConvShape{{3, 11, 9}, 5, {3, 2, 1}}}) {
    const int N = 6, Ho = s.win.out(s.in.h), Wo = s.win.out(s.in.w), P = Ho * Wo;
    const size_t nx = static_cast<size_t>(N) * s.in.size(), ny = static_cast<size_t>(N) * s.K * P;
    const auto x = ref::random_uniform(nx, -1, 1, ++seed);
    const auto w = ref::random_uniform(static_cast<size_t>(s.K) * s.in.c * s.win.k * s.win.k, -1, 1, ++seed);
    const auto b = ref::random_uniform(s.K, -1, 1, ++seed), dy = ref::random_uniform(ny, -1, 1, ++seed);
    std::vector<float> y(ny), y_relu(ny), dx(nx);
    cpu::conv2d_forward(x.data(), N, s.in, w.data(), b.data(), s.K, s.win, y.data());
    cpu::conv2d_forward(x.data(), N, s.in, w.data(), b.data(), s.K, s.win, y_relu.data(), true);
    cpu::conv2d_backward_data(dy.data(), N, s.in, w.data(), s.K, s.win, dx.data());
    std::vector<float> relu_of_y(ny);
    cpu::relu_forward(y.data(), ny, relu_of_y.data());
    EXPECT_EQ(relu_of_y, y_relu) << "conv + fused relu, input " << s.in.c << "x" << s.in.h << "x" << s.in.w;
    for (int i = 0; i < N; ++i) {
      std::vector<float> y1(static_cast<size_t>(s.K) * P), dx1(s.in.size());
      cpu::conv2d_forward(x.data() + i * s.in.size(), 1, s.in, w.data(), b.data(), s.K, s.win, y1.data());
      cpu::conv2d_backward_data(dy.data() + static_cast<size_t>(i) * s.K * P, 1, s.in, w.data(), s.K, s.win, dx1.data());
      EXPECT_EQ(0, std::memcmp(y1.data(), y.data() + i * y1.size(), y1.size() * sizeof(float))) << "forward, image " << i;
      EXPECT_EQ(0, std::memcmp(dx1.data(), dx.data() + i * dx1.size(), dx1.size() * sizeof(float))) << "dx, image " << i;
    }
  }
  const int N = 7, in = 576, out = 64;
  const auto x = ref::random_uniform(static_cast<size_t>(N) * in, -1, 1, ++seed);
  const auto w = ref::random_uniform(static_cast<size_t>(out) * in, -1, 1, ++seed);
  const auto b = ref::random_uniform(out, -1, 1, ++seed), dy = ref::random_uniform(static_cast<size_t>(N) * out, -1, 1, ++seed);
  std::vector<float> y(N * out), y_relu(N * out), relu_of_y(N * out), dx(N * in);
  cpu::dense_forward(x.data(), N, in, w.data(), b.data(), out, y.data());
  cpu::dense_forward(x.data(), N, in, w.data(), b.data(), out, y_relu.data(), true);
  cpu::dense_backward_data(dy.data(), N, in, w.data(), out, dx.data());
  cpu::relu_forward(y.data(), y.size(), relu_of_y.data());
  EXPECT_EQ(relu_of_y, y_relu) << "dense + fused relu";
  for (int i = 0; i < N; ++i) {
    std::vector<float> y1(out), dx1(in);
    cpu::dense_forward(x.data() + i * in, 1, in, w.data(), b.data(), out, y1.data());
    cpu::dense_backward_data(dy.data() + i * out, 1, in, w.data(), out, dx1.data());
    EXPECT_EQ(0, std::memcmp(y1.data(), y.data() + i * out, out * sizeof(float))) << "dense forward, image " << i;
    EXPECT_EQ(0, std::memcmp(dx1.data(), dx.data() + i * in, in * sizeof(float))) << "dense dx, image " << i;
  }
}

// The AVX-512 2x2 pool against the shared window maths (pool_math.h) on odd and even widths across the 16-lane
// blocks, with ties (a grid of few values) and NaN: exact, values and argmax, and nothing written past the outputs.
TEST(Maxpool2, Avx512PlaneEqualsTheWindowMathsBitForBit) {
#if NUDGE_X86_KERNELS
  if (!cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) GTEST_SKIP() << "this CPU has no AVX-512";
  std::mt19937 rng(31);
  for (int H : {2, 3, 5, 13, 26})
    for (int W : {2, 3, 11, 26, 31, 32, 33, 66}) {
      std::vector<float> x(static_cast<size_t>(H) * W);
      for (float& v : x) v = static_cast<float>(static_cast<int>(rng() % 5)) - 2.0f;  // many ties
      x[rng() % x.size()] = std::nanf("");
      const int Ho = H / 2, Wo = W / 2;
      std::vector<float> y(Ho * Wo + 16, kPoison);
      std::vector<int32_t> a(Ho * Wo + 16, -7);
      cpu::maxpool2_plane_avx512(x.data(), H, W, y.data(), a.data());
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          const int want = maxpool_window_argmax(x.data(), H, W, Window{2, 2, 0}, oh, ow);
          ASSERT_EQ(a[oh * Wo + ow], want) << H << "x" << W << " window " << oh << "," << ow;
          ASSERT_EQ(0, std::memcmp(&y[oh * Wo + ow], &x[want], sizeof(float)));
        }
      for (int i = Ho * Wo; i < Ho * Wo + 16; ++i) ASSERT_TRUE(y[i] == kPoison && a[i] == -7) << "wrote past the end";
    }
#else
  GTEST_SKIP() << "not an x86-64 build: there is no AVX-512 pool";
#endif
}

#if NUDGE_X86_KERNELS
// The fused pool-and-ReLU backward and col2im's adds in AVX-512 against the loops they replace, written out here:
// the same comparisons and additions in the same order, so exact.
TEST(LayerLoops, Avx512PoolReluBackwardAndCol2imEqualTheScalarLoops) {
  if (!cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) GTEST_SKIP() << "this CPU has no AVX-512";
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int H : {2, 5, 13, 26})
    for (int W : {2, 3, 11, 26, 33, 40}) {
      std::vector<float> y(static_cast<size_t>(H) * W);
      for (float& v : y) v = rng() % 3 == 0 ? 0.0f : u(rng);  // ReLU outputs: zeros, and signs to exercise the mask
      const int Ho = H / 2, Wo = W / 2;
      std::vector<float> pooled(Ho * Wo), dy(Ho * Wo);
      std::vector<int32_t> arg(Ho * Wo);
      cpu::maxpool2_plane_avx512(y.data(), H, W, pooled.data(), arg.data());
      for (float& v : dy) v = u(rng);
      if (!dy.empty()) dy[0] = -0.0f;
      std::vector<float> want(y.size(), 0.0f), got(y.size() + 16, kPoison);
      for (int o = 0; o < Ho * Wo; ++o) want[arg[o]] += dy[o];
      for (size_t i = 0; i < want.size(); ++i) want[i] = y[i] > 0 ? want[i] : 0.0f;
      cpu::maxpool2_relu_backward_plane_avx512(dy.data(), arg.data(), y.data(), H, W, got.data());
      ASSERT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float))) << "pool+relu backward " << H << "x" << W;
      for (size_t i = want.size(); i < got.size(); ++i) ASSERT_EQ(got[i], kPoison) << "wrote past the plane";
    }
  for (int C : {1, 3})
    for (int k : {1, 2, 3, 5})
      for (int H : {5, 9, 13})
        for (int W : {5, 13, 28, 40}) {
          const int Ho = H - k + 1, Wo = W - k + 1, P = Ho * Wo, R = C * k * k, ld = P + 5;
          std::vector<float> col(static_cast<size_t>(R) * ld);
          for (float& v : col) v = u(rng);
          std::vector<float> want(static_cast<size_t>(C) * H * W, 0.0f), got(want.size(), kPoison);
          for (int c = 0; c < C; ++c)
            for (int ki = 0; ki < k; ++ki)
              for (int kj = 0; kj < k; ++kj)
                for (int oh = 0; oh < Ho; ++oh)
                  for (int ow = 0; ow < Wo; ++ow)
                    want[(c * H + oh + ki) * W + ow + kj] += col[static_cast<size_t>((c * k + ki) * k + kj) * ld + oh * Wo + ow];
          cpu::col2im_plain_avx512(col.data(), ld, C, H, W, k, got.data());
          ASSERT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float)))
              << "col2im C=" << C << " k=" << k << " " << H << "x" << W;
        }
}
#endif

// The whole promise, end to end: a robustness job (every attack, forward and backward passes) gives the same files
// on every instruction set, and a bad NUDGE_CPU_ISA is refused at exit 2 naming it.
TEST(CpuIsa, EveryInstructionSetGivesTheSameRobustnessFiles) {
  testing_support::CliSandbox box("nudge_isa_");
  const std::string model = std::string(NUDGE_SOURCE_DIR) + "/data/models/mnist_cnn_robust.safetensors";
  const std::string data = std::string(NUDGE_SOURCE_DIR) + "/data/mnist";
  if (!std::ifstream(data + "/t10k-images-idx3-ubyte")) GTEST_SKIP() << "no MNIST in data/mnist (data/fetch_mnist.sh)";
  std::string first;
  std::vector<std::string> first_files;
  for (cpu::CpuIsa isa : supported_isas()) {
    const std::string name = cpu::cpu_isa_name(isa), out = box.path(name);
    const auto r = box.run({"robustness", "--model", model, "--data", data, "--range", "0:6", "--eps", "0.3", "--attacks",
                            "apgd-ce,apgd-t,fab-t,square", "--apgd-iters", "4", "--targets", "2", "--fab-iters", "3",
                            "--square-queries", "40", "--device", "cpu", "--quiet", "--out", out},
                           "", "export NUDGE_CPU_ISA=" + name + ";");
    ASSERT_EQ(r.code, 0) << name << ": " << r.err;
    std::vector<std::string> files;
    for (const char* f : {"results.csv", "images.npy"}) files.push_back(testing_support::slurp(out + "/" + f));
    ASSERT_FALSE(files[0].empty());
    if (first.empty()) {
      first = name;
      first_files = files;
      continue;
    }
    EXPECT_TRUE(files[0] == first_files[0]) << "results.csv differs between " << first << " and " << name;
    EXPECT_TRUE(files[1] == first_files[1]) << "images.npy differs between " << first << " and " << name;
  }
  const auto bad = box.run({"predict", "--model", model, "--data", data, "--index", "3", "--device", "cpu"}, "",
                           "export NUDGE_CPU_ISA=sse9;");
  EXPECT_EQ(bad.code, 2) << bad.err;
  EXPECT_NE(bad.err.find("NUDGE_CPU_ISA=sse9"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace nudge
