// Every CPU layer (host/cpu/cpu_layers.h), forward and backward, against its double-precision twin in
// tests/support/reference_math on seeded random shapes: odd map sizes, pool windows that floor, batch 1 and 5,
// 1..5 input channels. Outputs are poisoned with NaN (every element must be written) and followed by a guard
// region (nothing may be written past the end). Then the whole CpuNetwork forward against the double network.
//
// Tolerances. The inputs are exact in double, so the reference is the exact answer and the measured error is the
// FP32 kernel's own rounding. The bound is |got - ref| <= atol + rtol*|ref| with atol a fraction of the RMS size of
// the reference output: elements near zero come from cancellation, where only an absolute bound makes sense.
// Measured (NUDGE_PRINT_ERRORS=1), the worst max|got - ref| / RMS(ref) over the cases below:
//   conv2d_forward 1.7e-6 (24x13x13 input, 216-term sums)   conv2d_backward_data 6.5e-7
//   conv2d_backward_filter dw 1.7e-6, db 1.1e-6 (sums of up to 5*26*26 terms)
//   dense_forward 1.1e-6, dense_backward_data 7.1e-7, dense_backward_params 2.1e-7, network logits 6.6e-7
// so atol = 1e-5 * RMS leaves a margin of about 6x; rtol 1e-5 is ~100 float ulps. relu and max-pool only copy and
// must be exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "architecture.h"
#include "cpu_layers.h"
#include "cpu_network.h"
#include "model.h"
#include "reference_math.h"

namespace nudge {
namespace {

constexpr double kRtol = 1e-5;
constexpr double kAtolPerRms = 1e-5;

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

// The atol for an output: a fixed fraction of its typical size (and never zero, for all-zero outputs).
double atol_for(const std::vector<double>& ref) { return kAtolPerRms * std::max(rms(ref), 1e-3); }

// A layer's weight and bias gradients against the oracle's, and the guards after both buffers.
void expect_param_grads(const ref::GuardedBuffer& dw, const ref::GuardedBuffer& db, const std::vector<double>& dw_ref,
                        const std::vector<double>& db_ref, const std::string& what) {
  ref::expect_close(dw.values(), dw_ref, kRtol, atol_for(dw_ref), what + " dw");
  ref::expect_close(db.values(), db_ref, kRtol, atol_for(db_ref), what + " db");
  dw.expect_guard_intact(what + " dw");
  db.expect_guard_intact(what + " db");
}

std::string shape_name(int N, Shape3 in) {
  return "N=" + std::to_string(N) + " in=" + std::to_string(in.c) + "x" + std::to_string(in.h) + "x" +
         std::to_string(in.w);
}

// ---- convolution ----------------------------------------------------------------------------------------------

struct ConvCase {
  int N;
  Shape3 in;
  int K, k;
};

const ConvCase kConvCases[] = {
    {1, {1, 7, 9}, 1, 3},   {5, {3, 7, 9}, 4, 3},     {2, {5, 6, 5}, 3, 2},   {1, {2, 5, 5}, 7, 5},
    {3, {4, 8, 11}, 5, 1},  {5, {1, 28, 28}, 24, 3},  {2, {24, 13, 13}, 36, 3}, {5, {2, 9, 7}, 2, 4},
};

// Strides, padding (also padding as wide as the kernel, where border outputs see only zeros and the bias) and
// windows that do not tile the map: the general im2col path against the double twin, same tolerances.
struct WindowConvCase {
  int N;
  Shape3 in;
  int K;
  Window win;
};

const WindowConvCase kWindowConvCases[] = {
    {2, {3, 9, 7}, 4, {3, 1, 1}}, {3, {2, 28, 28}, 8, {4, 2, 1}}, {1, {1, 7, 9}, 2, {3, 2, 0}},
    {2, {5, 6, 5}, 3, {2, 3, 1}}, {1, {2, 5, 5}, 4, {5, 1, 2}},   {2, {1, 4, 4}, 2, {3, 1, 3}},
    {5, {1, 28, 28}, 6, {5, 1, 2}},
};

// One convolution case, forward and both backward passes, against the double twin.
void check_conv(const WindowConvCase& c, uint32_t& seed) {
  const std::string name = shape_name(c.N, c.in) + " K=" + std::to_string(c.K) + " k=" + std::to_string(c.win.k) +
                           " s=" + std::to_string(c.win.stride) + " p=" + std::to_string(c.win.pad);
  SCOPED_TRACE(name);
  const int Ho = c.win.out(c.in.h), Wo = c.win.out(c.in.w);
  const size_t nx = static_cast<size_t>(c.N) * c.in.size(), ny = static_cast<size_t>(c.N) * c.K * Ho * Wo;
  const size_t nw = static_cast<size_t>(c.K) * c.in.c * c.win.k * c.win.k;
  const auto x = ref::random_uniform(nx, -1, 1, ++seed);
  const auto w = ref::random_uniform(nw, -0.5f, 0.5f, ++seed);
  const auto b = ref::random_uniform(c.K, -0.5f, 0.5f, ++seed);
  const auto dy = ref::random_uniform(ny, -1, 1, ++seed);
  const auto xd = ref::to_double(x), wd = ref::to_double(w), bd = ref::to_double(b), dyd = ref::to_double(dy);

  ref::GuardedBuffer y(ny);
  cpu::conv2d_forward(x.data(), c.N, c.in, w.data(), b.data(), c.K, c.win, y.data());
  const auto y_ref = ref::conv2d_forward(xd, c.N, c.in, wd, bd, c.K, c.win);
  ref::expect_close(y.values(), y_ref, kRtol, atol_for(y_ref), "conv2d_forward " + name);
  y.expect_guard_intact("conv2d_forward " + name);

  ref::GuardedBuffer dx(nx);
  cpu::conv2d_backward_data(dy.data(), c.N, c.in, w.data(), c.K, c.win, dx.data());
  const auto dx_ref = ref::conv2d_backward_data(dyd, c.N, c.in, wd, c.K, c.win);
  ref::expect_close(dx.values(), dx_ref, kRtol, atol_for(dx_ref), "conv2d_backward_data " + name);
  dx.expect_guard_intact("conv2d_backward_data " + name);

  ref::GuardedBuffer dw(nw), db(c.K);
  cpu::conv2d_backward_filter(x.data(), dy.data(), c.N, c.in, c.K, c.win, dw.data(), db.data());
  std::vector<double> dw_ref, db_ref;
  ref::conv2d_backward_filter(xd, dyd, c.N, c.in, c.K, c.win, dw_ref, db_ref);
  expect_param_grads(dw, db, dw_ref, db_ref, "conv2d_backward_filter " + name);
}

TEST(CpuLayers, ConvMatchesReference) {
  uint32_t seed = 1000;
  for (const ConvCase& c : kConvCases) check_conv({c.N, c.in, c.K, Window{c.k, 1, 0}}, seed);
}

TEST(CpuLayers, ConvWithStrideAndPaddingMatchesReference) {
  uint32_t seed = 1500;
  for (const WindowConvCase& c : kWindowConvCases) check_conv(c, seed);
}

// The layers overwrite their outputs: a second call into the same (now filled) buffers gives the same answer, and
// the filter gradient is not accumulated across calls.
TEST(CpuLayers, ConvOverwritesRatherThanAccumulates) {
  const ConvCase c{3, {2, 7, 9}, 3, 3};
  const int Ho = c.in.h - c.k + 1, Wo = c.in.w - c.k + 1;
  const size_t nx = static_cast<size_t>(c.N) * c.in.size(), ny = static_cast<size_t>(c.N) * c.K * Ho * Wo;
  const size_t nw = static_cast<size_t>(c.K) * c.in.c * c.k * c.k;
  const auto x = ref::random_uniform(nx, -1, 1, 2001), w = ref::random_uniform(nw, -1, 1, 2002);
  const auto b = ref::random_uniform(c.K, -1, 1, 2003), dy = ref::random_uniform(ny, -1, 1, 2004);
  std::vector<float> y1(ny), y2(ny, 7.0f), dx1(nx), dx2(nx, 7.0f), dw1(nw), dw2(nw), db1(c.K), db2(c.K);
  cpu::conv2d_forward(x.data(), c.N, c.in, w.data(), b.data(), c.K, c.k, y1.data());
  cpu::conv2d_forward(x.data(), c.N, c.in, w.data(), b.data(), c.K, c.k, y2.data());
  cpu::conv2d_backward_data(dy.data(), c.N, c.in, w.data(), c.K, c.k, dx1.data());
  cpu::conv2d_backward_data(dy.data(), c.N, c.in, w.data(), c.K, c.k, dx2.data());
  cpu::conv2d_backward_filter(x.data(), dy.data(), c.N, c.in, c.K, c.k, dw1.data(), db1.data());
  cpu::conv2d_backward_filter(x.data(), dy.data(), c.N, c.in, c.K, c.k, dw2.data(), db2.data());
  cpu::conv2d_backward_filter(x.data(), dy.data(), c.N, c.in, c.K, c.k, dw2.data(), db2.data());
  EXPECT_EQ(y1, y2);
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(dw1, dw2);
  EXPECT_EQ(db1, db2);
}

// ---- relu -----------------------------------------------------------------------------------------------------

TEST(CpuLayers, ReluMatchesReference) {
  uint32_t seed = 3000;
  for (size_t n : {size_t{1}, size_t{7}, size_t{63}, size_t{5 * 3 * 7 * 9}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    auto x = ref::random_uniform(n, -1, 1, ++seed);
    // Exact zeros of both signs sit on the kink: relu gives 0 and passes no gradient there.
    x[0] = 0.0f;
    if (n > 1) x[1] = -0.0f;
    const auto dy = ref::random_uniform(n, -1, 1, ++seed);
    ref::GuardedBuffer y(n), dx(n);
    cpu::relu_forward(x.data(), n, y.data());
    const auto y_ref = ref::relu_forward(ref::to_double(x));
    ref::expect_close(y.values(), y_ref, 0, 0, "relu_forward");
    y.expect_guard_intact("relu_forward");
    cpu::relu_backward(y.data(), dy.data(), n, dx.data());
    const auto dx_ref = ref::relu_backward(y_ref, ref::to_double(dy));
    ref::expect_close(dx.values(), dx_ref, 0, 0, "relu_backward");
    dx.expect_guard_intact("relu_backward");
  }
}

// ---- max-pool -------------------------------------------------------------------------------------------------

struct PoolCase {
  int N;
  Shape3 in;
  int p;
};

const PoolCase kPoolCases[] = {
    {1, {1, 7, 9}, 2}, {5, {3, 7, 9}, 2}, {2, {2, 9, 7}, 3}, {1, {5, 5, 5}, 5},
    {3, {4, 6, 6}, 1}, {2, {2, 8, 8}, 4}, {5, {1, 11, 11}, 2}, {1, {24, 26, 26}, 2},
};

void check_pool(const PoolCase& c, const std::vector<float>& x, uint32_t dy_seed, const std::string& what) {
  const std::string name = what + " " + shape_name(c.N, c.in) + " p=" + std::to_string(c.p);
  SCOPED_TRACE(name);
  const int Ho = c.in.h / c.p, Wo = c.in.w / c.p;
  const size_t nx = static_cast<size_t>(c.N) * c.in.size(), ny = static_cast<size_t>(c.N) * c.in.c * Ho * Wo;
  ref::GuardedBuffer y(ny);
  ref::GuardedIndexBuffer am(ny);
  cpu::maxpool_forward(x.data(), c.N, c.in, c.p, y.data(), am.data());
  std::vector<double> y_ref;
  std::vector<int32_t> am_ref;
  ref::maxpool_forward(ref::to_double(x), c.N, c.in, c.p, y_ref, am_ref);
  ref::expect_close(y.values(), y_ref, 0, 0, "maxpool_forward y " + name);
  EXPECT_EQ(am.values(), am_ref) << "maxpool_forward argmax " << name << " (ties go to the first in row-major order)";
  y.expect_guard_intact("maxpool_forward y " + name);
  am.expect_guard_intact("maxpool_forward argmax " + name);

  // Backward through the reference argmax, so a wrong argmax shows up above and not twice.
  const auto dy = ref::random_uniform(ny, -1, 1, dy_seed);
  ref::GuardedBuffer dx(nx);
  cpu::maxpool_backward(dy.data(), am_ref.data(), c.N, c.in, c.p, dx.data());
  const auto dx_ref = ref::maxpool_backward(ref::to_double(dy), am_ref, c.N, c.in, c.p);
  ref::expect_close(dx.values(), dx_ref, 0, 0, "maxpool_backward " + name);
  dx.expect_guard_intact("maxpool_backward " + name);
}

TEST(CpuLayers, MaxPoolMatchesReference) {
  uint32_t seed = 4000;
  for (const PoolCase& c : kPoolCases) {
    const auto x = ref::random_uniform(static_cast<size_t>(c.N) * c.in.size(), -1, 1, ++seed);
    check_pool(c, x, ++seed, "random");
  }
}

// Inputs from {0, 1, 2} (and all-equal planes) make ties the rule: the first maximum in row-major order wins.
TEST(CpuLayers, MaxPoolTiesGoToFirstInRowMajorOrder) {
  uint32_t seed = 4500;
  for (const PoolCase& c : kPoolCases) {
    auto x = ref::random_uniform(static_cast<size_t>(c.N) * c.in.size(), 0, 3, ++seed);
    for (float& v : x) v = std::floor(v);
    check_pool(c, x, ++seed, "ties");
    std::vector<float> flat(x.size(), -0.5f);
    check_pool(c, flat, ++seed, "constant");
  }
  // A hand-made window: the maximum 2 appears at (0,1) and (1,0) of a 2x2 window; (0,1) comes first.
  const float x[4] = {1, 2, 2, 0};
  float y = 0;
  int32_t am = -1;
  cpu::maxpool_forward(x, 1, {1, 2, 2}, 2, &y, &am);
  EXPECT_EQ(y, 2.0f);
  EXPECT_EQ(am, 1);
}

// Overlapping windows (stride < k), padding, and windows that skip pixels (stride > k): max-pooling must pick the
// reference's maximum and route gradients exactly (an input that is the maximum of several windows gets their sum,
// added in the reference's order, so the float result is the double one rounded once per addition of at most
// ceil(k/stride)^2 terms: checked exactly on values from {0, 1, 2, 3}, where every sum is exact, and to 1e-6 on random
// ones). Average pooling: k*k-term sums, the same tolerances as the convolution.
struct WindowPoolCase {
  int N;
  Shape3 in;
  Window win;
};

const WindowPoolCase kMaxWindowCases[] = {
    {2, {3, 9, 7}, {3, 2, 1}}, {1, {2, 8, 8}, {2, 1, 0}}, {3, {1, 10, 10}, {3, 3, 1}}, {2, {2, 7, 7}, {3, 1, 1}},
    {1, {1, 9, 11}, {5, 2, 2}}, {2, {2, 13, 13}, {2, 3, 0}}, {1, {4, 14, 14}, {3, 2, 1}},
};
const WindowPoolCase kAvgWindowCases[] = {
    {2, {3, 9, 7}, {2, 2, 0}}, {1, {2, 9, 9}, {3, 2, 0}}, {3, {1, 6, 7}, {2, 1, 0}}, {2, {10, 7, 7}, {7, 7, 0}},
    {1, {2, 11, 8}, {3, 4, 0}}, {2, {2, 7, 8}, {2, 3, 0}}, {1, {3, 5, 6}, {1, 1, 0}},
};

std::string window_name(const WindowPoolCase& c) {
  return shape_name(c.N, c.in) + " k=" + std::to_string(c.win.k) + " s=" + std::to_string(c.win.stride) +
         " p=" + std::to_string(c.win.pad);
}

void check_max_window(const WindowPoolCase& c, const std::vector<float>& x, const std::vector<float>& dy, double rtol) {
  const std::string name = window_name(c);
  SCOPED_TRACE(name);
  const size_t nx = static_cast<size_t>(c.N) * c.in.size(), ny = dy.size();
  ref::GuardedBuffer y(ny);
  ref::GuardedIndexBuffer am(ny);
  cpu::maxpool_forward(x.data(), c.N, c.in, c.win, y.data(), am.data());
  std::vector<double> y_ref;
  std::vector<int32_t> am_ref;
  ref::maxpool_forward(ref::to_double(x), c.N, c.in, c.win, y_ref, am_ref);
  ref::expect_close(y.values(), y_ref, 0, 0, "maxpool_forward y " + name);
  EXPECT_EQ(am.values(), am_ref) << "maxpool_forward argmax " << name;
  y.expect_guard_intact("maxpool_forward y " + name);
  am.expect_guard_intact("maxpool_forward argmax " + name);
  ref::GuardedBuffer dx(nx);
  cpu::maxpool_backward(dy.data(), am_ref.data(), c.N, c.in, c.win, dx.data());
  const auto dx_ref = ref::maxpool_backward(ref::to_double(dy), am_ref, c.N, c.in, c.win);
  ref::expect_close(dx.values(), dx_ref, rtol, rtol, "maxpool_backward " + name);
  dx.expect_guard_intact("maxpool_backward " + name);
}

TEST(CpuLayers, MaxPoolWindowsMatchReference) {
  uint32_t seed = 4700;
  for (const WindowPoolCase& c : kMaxWindowCases) {
    const size_t nx = static_cast<size_t>(c.N) * c.in.size();
    const size_t ny = static_cast<size_t>(c.N) * c.in.c * c.win.out(c.in.h) * c.win.out(c.in.w);
    const auto xr = ref::random_uniform(nx, -1, 1, ++seed), dyr = ref::random_uniform(ny, -1, 1, ++seed);
    check_max_window(c, xr, dyr, 1e-6);
    auto x = ref::random_uniform(nx, 0, 3, ++seed), dy = ref::random_uniform(ny, 0, 4, ++seed);
    for (float& v : x) v = std::floor(v);  // ties everywhere: the first maximum in row-major order wins
    for (float& v : dy) v = std::floor(v);
    check_max_window(c, x, dy, 0);
    // All-negative inputs: the padding (conceptually -inf) must never be chosen, even against -1.
    std::vector<float> neg(nx, -1.0f);
    check_max_window(c, neg, dy, 0);
  }
}

TEST(CpuLayers, AvgPoolMatchesReference) {
  uint32_t seed = 4800;
  for (const WindowPoolCase& c : kAvgWindowCases) {
    const std::string name = window_name(c);
    SCOPED_TRACE(name);
    const size_t nx = static_cast<size_t>(c.N) * c.in.size();
    const size_t ny = static_cast<size_t>(c.N) * c.in.c * c.win.out(c.in.h) * c.win.out(c.in.w);
    const auto x = ref::random_uniform(nx, -1, 1, ++seed), dy = ref::random_uniform(ny, -1, 1, ++seed);
    ref::GuardedBuffer y(ny), dx(nx);
    cpu::avgpool_forward(x.data(), c.N, c.in, c.win, y.data());
    const auto y_ref = ref::avgpool_forward(ref::to_double(x), c.N, c.in, c.win);
    ref::expect_close(y.values(), y_ref, kRtol, atol_for(y_ref), "avgpool_forward " + name);
    y.expect_guard_intact("avgpool_forward " + name);
    cpu::avgpool_backward(dy.data(), c.N, c.in, c.win, dx.data());
    const auto dx_ref = ref::avgpool_backward(ref::to_double(dy), c.N, c.in, c.win);
    ref::expect_close(dx.values(), dx_ref, kRtol, atol_for(dx_ref), "avgpool_backward " + name);
    dx.expect_guard_intact("avgpool_backward " + name);
  }
}

// ---- dense ----------------------------------------------------------------------------------------------------

struct DenseCase {
  int N, in, out;
};

const DenseCase kDenseCases[] = {{1, 1, 2}, {5, 7, 3}, {5, 100, 13}, {2, 576, 64}, {3, 64, 10}, {1, 33, 1}};

TEST(CpuLayers, DenseMatchesReference) {
  uint32_t seed = 5000;
  for (const DenseCase& c : kDenseCases) {
    const std::string name =
        "N=" + std::to_string(c.N) + " in=" + std::to_string(c.in) + " out=" + std::to_string(c.out);
    SCOPED_TRACE(name);
    const size_t nx = static_cast<size_t>(c.N) * c.in, ny = static_cast<size_t>(c.N) * c.out,
                 nw = static_cast<size_t>(c.out) * c.in;
    const auto x = ref::random_uniform(nx, -1, 1, ++seed), w = ref::random_uniform(nw, -0.5f, 0.5f, ++seed);
    const auto b = ref::random_uniform(c.out, -0.5f, 0.5f, ++seed), dy = ref::random_uniform(ny, -1, 1, ++seed);
    const auto xd = ref::to_double(x), wd = ref::to_double(w), bd = ref::to_double(b), dyd = ref::to_double(dy);

    ref::GuardedBuffer y(ny);
    cpu::dense_forward(x.data(), c.N, c.in, w.data(), b.data(), c.out, y.data());
    const auto y_ref = ref::dense_forward(xd, c.N, c.in, wd, bd, c.out);
    ref::expect_close(y.values(), y_ref, kRtol, atol_for(y_ref), "dense_forward " + name);
    y.expect_guard_intact("dense_forward " + name);

    ref::GuardedBuffer dx(nx);
    cpu::dense_backward_data(dy.data(), c.N, c.in, w.data(), c.out, dx.data());
    const auto dx_ref = ref::dense_backward_data(dyd, c.N, c.in, wd, c.out);
    ref::expect_close(dx.values(), dx_ref, kRtol, atol_for(dx_ref), "dense_backward_data " + name);
    dx.expect_guard_intact("dense_backward_data " + name);

    ref::GuardedBuffer dw(nw), db(c.out);
    cpu::dense_backward_params(x.data(), dy.data(), c.N, c.in, c.out, dw.data(), db.data());
    std::vector<double> dw_ref, db_ref;
    ref::dense_backward_params(xd, dyd, c.N, c.in, c.out, dw_ref, db_ref);
    expect_param_grads(dw, db, dw_ref, db_ref, "dense_backward_params " + name);
  }
}

// ---- whole network --------------------------------------------------------------------------------------------

// Logits of the float network against the double network, and each image of a batch against the same image run
// alone: the same bits, logits and input gradient (column_gemm keeps every image's arithmetic its own).
TEST(CpuNetworkForward, MatchesReferenceAndIsPerImage) {
  uint32_t seed = 6000;
  for (const char* text : {Architecture::reference_string(), "1x8x8:conv3k3,relu,pool2,flatten,dense5",
                           "3x9x7:conv4k2,relu,pool3,conv2k1,flatten,dense6,relu,dense2"}) {
    SCOPED_TRACE(text);
    const Architecture arch = Architecture::parse(text);
    const Model m = ref::random_model(arch, ++seed);
    const int N = 5, D = arch.input.size(), K = arch.num_classes();
    const auto x = ref::random_uniform(static_cast<size_t>(N) * D, 0, 1, ++seed);
    CpuNetwork net(arch);
    net.forward(ref::param_ptrs(m), x.data(), N);
    const std::vector<float> logits(net.logits(), net.logits() + N * K);
    const auto ref_logits = ref::network_forward(arch, ref::params_to_double(m), ref::to_double(x), N);
    ref::expect_close(logits, ref_logits, kRtol, atol_for(ref_logits), std::string("logits ") + text);
    const auto dlogits = ref::random_uniform(static_cast<size_t>(N) * K, -1, 1, ++seed);
    std::vector<float> dx(static_cast<size_t>(N) * D);
    net.backward(ref::param_ptrs(m), dlogits.data(), N, nullptr, dx.data());
    for (int i = 0; i < N; ++i) {
      CpuNetwork alone(arch);
      alone.forward(ref::param_ptrs(m), x.data() + static_cast<size_t>(i) * D, 1);
      EXPECT_EQ(0, std::memcmp(alone.logits(), logits.data() + i * K, K * sizeof(float)))
          << "image " << i << " alone vs in the batch: logits";
      std::vector<float> dx1(D);
      alone.backward(ref::param_ptrs(m), dlogits.data() + i * K, 1, nullptr, dx1.data());
      EXPECT_EQ(0, std::memcmp(dx1.data(), dx.data() + static_cast<size_t>(i) * D, D * sizeof(float)))
          << "image " << i << " alone vs in the batch: input gradient";
    }
  }
}

}  // namespace
}  // namespace nudge
