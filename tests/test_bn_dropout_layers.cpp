// Batch normalisation and dropout on the CPU (host/cpu/cpu_train_layers.h, CpuNetwork in training mode) against the
// double-precision oracle (tests/support/reference_math) and central differences, the fold (model_fold.h) against
// the unfolded network in eval mode, and the dropout masks' keying and keep rate.
//
// Tolerances. The bn kernels take their float inputs exactly into double, compute in double and round once, so
// against the double oracle (the same formula) the error is the output's float rounding, at most 2^-24 |ref|, plus
// the double arithmetic's own ~1e-16 of the terms (where gamma xhat and beta cancel); kBnRtol and kBnAtolPerRms are
// those two with a margin of 1.2x and ~1e4x (measured with NUDGE_PRINT_ERRORS=1, 2026-12-03: max rel error 5.9e-8 of
// the forward outputs, batch mean and variance exact). The backward against central differences: max |got - fd|
// 8.3e-8 (dx), 3.0e-7 (dgamma), bounds 1e-6 |ref| + 1e-7 RMS. Whole-network checks inherit the conv and dense layers'
// float error (tests/test_cpu_layers.cpp: ~1e-6 of the output's size) and use their bounds (measured: 2.2e-6 against a
// bound of 1.2e-4 for d/dconv1.weight, 6.3e-7 against 8.9e-5 for the input gradient).
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "cpu_backend.h"
#include "cpu_network.h"
#include "cpu_train_layers.h"
#include "dropout_mask.h"
#include "model.h"
#include "model_fold.h"
#include "reference_math.h"

namespace nudge {
namespace {

constexpr double kBnRtol = 1.2 * 0x1p-24;
constexpr double kBnAtolPerRms = 1e-12;

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

struct BnCase {
  int N, C, P;  // P = 1: a bn after a dense layer (C features)
};
const BnCase kBnCases[] = {{5, 3, 7}, {1, 4, 9}, {6, 4, 1}, {2, 5, 1}, {3, 2, 26 * 26}};

std::string case_name(const BnCase& c) {
  return "N=" + std::to_string(c.N) + " C=" + std::to_string(c.C) + " P=" + std::to_string(c.P);
}

// Inputs whose channels sit at different offsets (channel c around 3c - 4), so a mean left unsubtracted or taken over
// the wrong axis shows.
std::vector<float> bn_input(const BnCase& c, uint32_t seed) {
  std::vector<float> x = ref::random_uniform(static_cast<size_t>(c.N) * c.C * c.P, -1, 1, seed);
  for (int n = 0; n < c.N; ++n)
    for (int ch = 0; ch < c.C; ++ch)
      for (int p = 0; p < c.P; ++p) x[(static_cast<size_t>(n) * c.C + ch) * c.P + p] += 3.0f * ch - 4.0f;
  return x;
}

TEST(BatchNorm, TrainingAndEvalForwardMatchTheDoubleOracle) {
  uint32_t seed = 20100;
  for (const BnCase& c : kBnCases) {
    SCOPED_TRACE(case_name(c));
    const size_t n = static_cast<size_t>(c.N) * c.C * c.P;
    const auto x = bn_input(c, ++seed);
    const auto gamma = ref::random_uniform(c.C, 0.5f, 1.5f, ++seed), beta = ref::random_uniform(c.C, -0.5f, 0.5f, ++seed);
    std::vector<double> mean, var;
    const auto want = ref::batch_norm_forward(ref::to_double(x), c.N, c.C, c.P, ref::to_double(gamma),
                                              ref::to_double(beta), mean, var, true);
    ref::GuardedBuffer y(n);
    std::vector<double> got_mean(c.C, NAN), got_var(c.C, NAN);
    cpu::batch_norm_forward_train(x.data(), c.N, c.C, c.P, gamma.data(), beta.data(), y.data(), got_mean.data(),
                                  got_var.data());
    ref::expect_close(y.data(), want.data(), n, kBnRtol, kBnAtolPerRms * rms(want), "training forward");
    y.expect_guard_intact("training forward");
    ref::expect_close(got_mean.data(), mean.data(), c.C, 1e-15, 1e-15, "batch mean");
    ref::expect_close(got_var.data(), var.data(), c.C, 1e-15, 1e-15, "batch variance (biased)");
    // Normalised: each channel of the output has mean beta and variance gamma^2 var / (var + eps).
    for (int ch = 0; ch < c.C; ++ch) EXPECT_GT(var[ch], 0.01) << "the case should spread its channels";

    // Eval: the given (running) statistics instead of the batch's.
    const auto rmean = ref::random_uniform(c.C, -3, 3, ++seed), rvar = ref::random_uniform(c.C, 0.5f, 2, ++seed);
    std::vector<double> rm = ref::to_double(rmean), rv = ref::to_double(rvar);
    const auto want_eval = ref::batch_norm_forward(ref::to_double(x), c.N, c.C, c.P, ref::to_double(gamma),
                                                   ref::to_double(beta), rm, rv, false);
    y.poison();
    cpu::batch_norm_forward_eval(x.data(), c.N, c.C, c.P, gamma.data(), beta.data(), rmean.data(), rvar.data(), y.data());
    ref::expect_close(y.data(), want_eval.data(), n, kBnRtol, kBnAtolPerRms * rms(want_eval), "eval forward");
    y.expect_guard_intact("eval forward");
  }
}

// sum_i w_i y_i of the double bn, the objective whose gradient the float backward must give.
double bn_objective(const std::vector<double>& x, const std::vector<double>& gamma, const std::vector<double>& beta,
                    const std::vector<double>& w, const BnCase& c, bool batch_stats, const std::vector<double>& rm,
                    const std::vector<double>& rv) {
  std::vector<double> mean = rm, var = rv;
  const auto y = ref::batch_norm_forward(x, c.N, c.C, c.P, gamma, beta, mean, var, batch_stats);
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
  return s;
}

// The backward against central differences of the double forward (smooth: no kinks to avoid; h = 1e-6 leaves
// ~1e-10 rounding and ~1e-12 truncation, so the quotient is the gradient and the bound measures the float path, which
// rounds once from double).
TEST(BatchNorm, BackwardMatchesCentralDifferencesInTrainingAndEval) {
  constexpr double h = 1e-6;
  uint32_t seed = 20200;
  for (const BnCase& c : kBnCases) {
    if (static_cast<size_t>(c.N) * c.C * c.P > 400) continue;  // every element is differenced
    for (bool batch_stats : {true, false}) {
      SCOPED_TRACE(case_name(c) + (batch_stats ? " training" : " eval"));
      const size_t n = static_cast<size_t>(c.N) * c.C * c.P;
      const auto x = bn_input(c, ++seed);
      const auto gamma = ref::random_uniform(c.C, 0.5f, 1.5f, ++seed), beta = ref::random_uniform(c.C, -0.5f, 0.5f, ++seed);
      const auto w = ref::random_uniform(n, -1, 1, ++seed);  // dy
      const auto rmean = ref::random_uniform(c.C, -3, 3, ++seed), rvar = ref::random_uniform(c.C, 0.5f, 2, ++seed);
      std::vector<double> xd = ref::to_double(x), gd = ref::to_double(gamma), bd = ref::to_double(beta);
      const std::vector<double> wd = ref::to_double(w), rm = ref::to_double(rmean), rv = ref::to_double(rvar);

      std::vector<double> mean = rm, var = rv;
      if (batch_stats) ref::batch_norm_forward(xd, c.N, c.C, c.P, gd, bd, mean, var, true);
      ref::GuardedBuffer dx(n), dgamma(c.C), dbeta(c.C);
      cpu::batch_norm_backward(x.data(), w.data(), c.N, c.C, c.P, gamma.data(), mean.data(), var.data(), batch_stats,
                               dx.data(), dgamma.data(), dbeta.data());
      dx.expect_guard_intact("dx");
      dgamma.expect_guard_intact("dgamma");
      dbeta.expect_guard_intact("dbeta");

      auto fd_of = [&](std::vector<double>& v) {
        std::vector<double> g(v.size());
        for (size_t i = 0; i < v.size(); ++i) {
          const double keep = v[i];
          v[i] = keep + h;
          const double plus = bn_objective(xd, gd, bd, wd, c, batch_stats, rm, rv);
          v[i] = keep - h;
          const double minus = bn_objective(xd, gd, bd, wd, c, batch_stats, rm, rv);
          v[i] = keep;
          g[i] = (plus - minus) / (2 * h);
        }
        return g;
      };
      const auto fd_x = fd_of(xd), fd_g = fd_of(gd), fd_b = fd_of(bd);
      ref::expect_close(dx.data(), fd_x.data(), n, 1e-6, 1e-7 * std::max(rms(fd_x), 1e-3), "dx");
      ref::expect_close(dgamma.data(), fd_g.data(), c.C, 1e-6, 1e-7 * std::max(rms(fd_g), 1e-3), "dgamma");
      ref::expect_close(dbeta.data(), fd_b.data(), c.C, 1e-6, 1e-7 * std::max(rms(fd_b), 1e-3), "dbeta");
      if (batch_stats) {
        // With batch statistics a constant shift of a channel's inputs changes nothing: dx sums to 0 per channel.
        for (int ch = 0; ch < c.C; ++ch) {
          double s = 0, scale = 0;
          for (int i = 0; i < c.N; ++i)
            for (int p = 0; p < c.P; ++p) {
              const double v = dx.data()[(static_cast<size_t>(i) * c.C + ch) * c.P + p];
              s += v;
              scale += std::fabs(v);
            }
          EXPECT_LE(std::fabs(s), 1e-6 * scale + 1e-12) << "channel " << ch;
        }
      }
    }
  }
}

// PyTorch's update: running = (1 - 0.1) running + 0.1 batch, with the unbiased variance var * M / (M - 1).
TEST(BatchNorm, RunningStatisticsUpdateIsPyTorchsFormula) {
  const std::vector<double> mean = {0.5, -2.0, 3.25}, var = {1.5, 0.01, 4.0};
  std::vector<float> rm = {0.0f, 1.0f, -1.0f}, rv = {1.0f, 2.0f, 0.5f};
  const std::vector<float> rm0 = rm, rv0 = rv;
  const int64_t M = 7 * 9;
  cpu::batch_norm_update_running(mean.data(), var.data(), 3, M, rm.data(), rv.data());
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(rm[c], static_cast<float>(0.9 * rm0[c] + 0.1 * mean[c])) << c;
    EXPECT_EQ(rv[c], static_cast<float>(0.9 * rv0[c] + 0.1 * var[c] * M / (M - 1.0))) << c;
  }
}

// ---- whole network --------------------------------------------------------------------------------------------

// A network with bn after a conv and a dense layer and dropout after each, in training mode with fixed dropout keys:
// CpuNetwork's parameter and input gradients against central differences of the double network with the same masks.
// Kinks (ReLU signs, pool argmaxes) are avoided as in tests/test_gradients_network.cpp; the bounds are its bounds.
TEST(BatchNorm, TrainingNetworkGradientsMatchCentralDifferences) {
  const Architecture arch = Architecture::parse(
      "1x6x6:conv3k3p1,bn,relu,pool2,dropout0.3,flatten,dense5,bn,relu,dropout0.5,dense4");
  const int N = 4, D = arch.input.size(), K = arch.num_classes();
  const Model m = ref::random_model(arch, 20300);
  const auto params = ref::param_ptrs(m);
  auto params_d = ref::params_to_double(m);
  const std::vector<uint32_t> keys = {7, 0, 3, 12};
  const TrainingPass pass{11, 3, keys.data()};
  std::vector<float> drop_p;
  for (const LayerSpec& l : arch.layers)
    if (l.kind == LayerKind::Dropout) drop_p.push_back(l.drop_probability());
  ref::TrainMode mode;
  mode.keeps = [&](int ordinal, int row, int unit) {
    return dropout_keeps(pass.seed, pass.step, keys[row], static_cast<uint32_t>(ordinal), static_cast<uint32_t>(unit),
                         drop_p[ordinal]);
  };
  const std::vector<int> labels = {1, 3, 0, 2};
  struct Eval {
    double loss;
    ref::ForwardTrace trace;
  };
  auto eval = [&](const std::vector<std::vector<double>>& p, const std::vector<double>& xd) {
    Eval e{0, {}};
    const auto z = ref::network_forward(arch, p, xd, N, &e.trace, &mode);
    for (int i = 0; i < N; ++i) {
      const double* zi = z.data() + static_cast<size_t>(i) * K;
      const double top = *std::max_element(zi, zi + K);
      double s = 0;
      for (int j = 0; j < K; ++j) s += std::exp(zi[j] - top);
      e.loss += top + std::log(s) - zi[labels[i]];
    }
    return e;
  };
  std::vector<float> x;
  Eval base;
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 50) << "no input clear of the kinks found; pick another seed";
    x = ref::random_uniform(static_cast<size_t>(N) * D, 0, 1, 20301 + attempt);
    base = eval(params_d, ref::to_double(x));
    if (base.trace.min_relu_margin > 1e-6 && base.trace.min_pool_gap > 1e-6) break;
  }
  std::vector<double> xd = ref::to_double(x);

  CpuNetwork net(arch);
  net.forward(params, x.data(), N, &pass);
  std::vector<float> dlogits(static_cast<size_t>(N) * K);
  for (int i = 0; i < N; ++i) {
    const auto p = ref::softmax(ref::to_double(net.logits() + i * K, K).data(), K);
    for (int j = 0; j < K; ++j) dlogits[i * K + j] = static_cast<float>(p[j] - (j == labels[i]));
  }
  std::vector<std::vector<float>> grads;
  std::vector<float*> gp;
  for (const Tensor& t : m.params) grads.emplace_back(t.size(), std::numeric_limits<float>::quiet_NaN());
  for (auto& g : grads) gp.push_back(g.data());
  std::vector<float> dx(static_cast<size_t>(N) * D, std::numeric_limits<float>::quiet_NaN());
  net.backward(params, dlogits.data(), N, &gp, dx.data());

  constexpr double h = 1e-6;
  auto max_abs = [](const std::vector<float>& v) {
    double s = 1e-6;
    for (float f : v) s = std::max(s, static_cast<double>(std::fabs(f)));
    return s;
  };
  int skipped = 0;
  auto differences = [&](std::vector<double>& v, const std::vector<float>& got_all, double scale, const std::string& what) {
    std::vector<float> got;
    std::vector<double> fd;
    for (size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + h;
      const Eval plus = eval(params_d, xd);
      v[i] = keep - h;
      const Eval minus = eval(params_d, xd);
      v[i] = keep;
      if (plus.trace != base.trace || minus.trace != base.trace) {
        ++skipped;
        continue;
      }
      got.push_back(got_all[i]);
      fd.push_back((plus.loss - minus.loss) / (2 * h));
    }
    ref::expect_close(got, fd, 1e-4, 2e-5 * scale, what);
  };
  const auto specs = arch.params();
  for (size_t p = 0; p < specs.size(); ++p) {
    if (specs[p].is_buffer) {
      // Training normalises with the batch's statistics: the running ones have no gradient.
      for (float g : grads[p]) EXPECT_EQ(g, 0.0f) << specs[p].name;
      continue;
    }
    // The bias of a layer right before a bn has gradient 0 (the batch mean takes it out again); what the float path
    // gives is the rounding of a sum that cancels, so it is measured against the layer's weight gradient.
    // Measured: 2.0e-6 against a conv1.weight gradient of ~0.5.
    const bool before_bn = specs[p].is_bias && arch.layers[specs[p].layer + 1].kind == LayerKind::BatchNorm;
    differences(params_d[p], grads[p], max_abs(grads[before_bn ? p - 1 : p]), "d/d" + specs[p].name);
  }
  differences(xd, dx, max_abs(dx), "d/dx");
  EXPECT_LT(skipped, 10) << "too many differences crossed a kink";
  // The logits themselves: the float training forward against the double one.
  const auto z = ref::network_forward(arch, ref::params_to_double(m), ref::to_double(x), N, nullptr, &mode);
  ref::expect_close(net.logits(), z.data(), z.size(), 1e-5, 1e-5 * std::max(rms(z), 1e-3), "training logits");
  // Batch statistics reach the running-statistics update: the first bn's are those of the conv output.
  const auto conv = ref::conv2d_forward(ref::to_double(x), N, arch.layers[0].in, params_d[0], params_d[1], 3,
                                        arch.layers[0].window());
  std::vector<double> mean, var;
  ref::batch_norm_forward(conv, N, 3, 36, params_d[2], params_d[3], mean, var, true);
  ref::expect_close(net.batch_mean(1).data(), mean.data(), 3, 1e-5, 1e-6, "bn1 batch mean");
  ref::expect_close(net.batch_var(1).data(), var.data(), 3, 1e-5, 1e-6, "bn1 batch variance");
}

// Eval mode (running statistics, dropout the identity) is what the fold computes: the unfolded network, the folded
// one and the double oracle agree; the CPU backend, which runs the fold, gives the folded model's bits.
TEST(BatchNorm, EvalNetworkEqualsTheFoldedNetwork) {
  for (const char* text : {"1x9x9:conv4k3p1,bn,relu,pool2,dropout0.25,conv5k2,bn,relu,flatten,dense7,bn,relu,dropout0.5,dense3",
                           "2x5x5:conv3k3s2p1,bn,flatten,dense4,bn,dense2"}) {
    SCOPED_TRACE(text);
    const Architecture arch = Architecture::parse(text);
    const Model m = ref::random_model(arch, 20400);
    const Model folded = fold_for_inference(m);
    EXPECT_FALSE(folded.arch.has_training_layers());
    const int N = 5, D = arch.input.size(), K = arch.num_classes();
    const auto x = ref::random_uniform(static_cast<size_t>(N) * D, 0, 1, 20401);
    const auto want = ref::network_forward(arch, ref::params_to_double(m), ref::to_double(x), N);
    CpuNetwork unfolded_net(arch), folded_net(folded.arch);
    unfolded_net.forward(ref::param_ptrs(m), x.data(), N);
    folded_net.forward(ref::param_ptrs(folded), x.data(), N);
    const double atol = 1e-5 * std::max(rms(want), 1e-3);
    const ref::CloseStats u = ref::expect_close(unfolded_net.logits(), want.data(), want.size(), 1e-5, atol, "unfolded eval");
    const ref::CloseStats f = ref::expect_close(folded_net.logits(), want.data(), want.size(), 1e-5, atol, "folded");
    std::printf("[fold] %s: max |logit - double| unfolded %.2g, folded %.2g\n", text, u.max_abs, f.max_abs);

    auto unfolded_backend = make_cpu_backend(), folded_backend = make_cpu_backend();
    unfolded_backend->load_model(m);
    folded_backend->load_model(folded);
    std::vector<float> pa(static_cast<size_t>(N) * K), pb(pa.size());
    unfolded_backend->predict(x.data(), N, pa.data());
    folded_backend->predict(x.data(), N, pb.data());
    EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float))) << "predict runs the fold";
    // What the backend hands back is the model as loaded, bn and all.
    Model back;
    unfolded_backend->store_model(back);
    EXPECT_EQ(back.arch, arch);
  }
  // A model without bn or dropout folds to itself, bit for bit.
  const Model plain = ref::random_model(Architecture::reference(), 20402);
  const Model same = fold_for_inference(plain);
  EXPECT_EQ(same.arch, plain.arch);
  for (size_t i = 0; i < plain.params.size(); ++i)
    EXPECT_EQ(0, std::memcmp(same.params[i].ptr(), plain.params[i].ptr(), plain.params[i].size() * sizeof(float)));
}

// ---- dropout --------------------------------------------------------------------------------------------------

TEST(Dropout, MaskIsTheKeyedDrawAndKeepsAtItsRate) {
  // dropout_mask (four units per Philox block) is dropout_keeps unit by unit, odd widths included.
  const std::vector<uint32_t> keys = {0, 5, 1u << 31, 9};
  for (int units : {1, 3, 7, 64}) {
    std::vector<uint8_t> keep(keys.size() * units);
    cpu::dropout_mask(42, 17, keys.data(), static_cast<int>(keys.size()), 2, units, 0.3f, keep.data());
    for (size_t r = 0; r < keys.size(); ++r)
      for (int u = 0; u < units; ++u)
        ASSERT_EQ(keep[r * units + u], dropout_keeps(42, 17, keys[r], 2, static_cast<uint32_t>(u), 0.3f)) << r << "," << u;
  }
  // The keep rate of 2^20 draws within 5 standard deviations of 1 - p, and draws of another step, row or layer
  // agree with these as independent ones would (p^2 + (1-p)^2 of the time).
  const int rows = 64, units = 1 << 14;
  std::vector<uint32_t> row_keys(rows);
  std::iota(row_keys.begin(), row_keys.end(), 0u);
  for (float p : {0.1f, 0.25f, 0.5f, 0.9f}) {
    SCOPED_TRACE(p);
    std::vector<uint8_t> a(static_cast<size_t>(rows) * units), b(a.size()), c(a.size());
    cpu::dropout_mask(7, 1, row_keys.data(), rows, 0, units, p, a.data());
    cpu::dropout_mask(7, 2, row_keys.data(), rows, 0, units, p, b.data());
    cpu::dropout_mask(7, 1, row_keys.data(), rows, 1, units, p, c.data());
    const double n = static_cast<double>(a.size());
    const double kept = std::accumulate(a.begin(), a.end(), 0.0) / n;
    const double sd = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(kept, 1.0 - p, 5 * sd);
    const double agree_iid = p * p + (1.0 - p) * (1.0 - p), sd_agree = std::sqrt(agree_iid * (1 - agree_iid) / n);
    double agree_step = 0, agree_layer = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      agree_step += a[i] == b[i];
      agree_layer += a[i] == c[i];
    }
    EXPECT_NEAR(agree_step / n, agree_iid, 5 * sd_agree) << "another step";
    EXPECT_NEAR(agree_layer / n, agree_iid, 5 * sd_agree) << "another layer";
  }
  // Inverted dropout: kept values scaled by 1/(1-p), the rest zero; backward the same mask and scale.
  const std::vector<float> xs = {1.0f, -2.0f, 3.0f, 4.0f};
  const std::vector<uint8_t> mask = {1, 0, 1, 0};
  std::vector<float> y(4), dx(4);
  cpu::dropout_forward(xs.data(), mask.data(), 4, dropout_scale(0.25f), y.data());
  cpu::dropout_backward(xs.data(), mask.data(), 4, dropout_scale(0.25f), dx.data());
  EXPECT_EQ(y, (std::vector<float>{1.0f / 0.75f, 0.0f, 3.0f / 0.75f, 0.0f}));
  EXPECT_EQ(dx, y);
}

// A row's mask depends on its key, not on which network (thread) ran it or what else shared its batch: the batch
// whole and split in two, with the same keys, give the same bits (the layers keep every row's arithmetic its own, so the products agree too).
TEST(Dropout, MasksDoNotDependOnHowTheBatchIsSplit) {
  const Architecture arch = Architecture::parse("1x6x6:conv2k3,relu,dropout0.4,flatten,dense8,relu,dropout0.5,dense3");
  const Model m = ref::random_model(arch, 20500);
  const int N = 6, D = arch.input.size(), K = arch.num_classes();
  const auto x = ref::random_uniform(static_cast<size_t>(N) * D, 0, 1, 20501);
  std::vector<uint32_t> keys(N);
  std::iota(keys.begin(), keys.end(), 0u);
  CpuNetwork whole(arch), first(arch), second(arch);
  const TrainingPass all{3, 5, keys.data()}, head{3, 5, keys.data()}, tail{3, 5, keys.data() + 2};
  whole.forward(ref::param_ptrs(m), x.data(), N, &all);
  first.forward(ref::param_ptrs(m), x.data(), 2, &head);
  second.forward(ref::param_ptrs(m), x.data() + 2 * D, N - 2, &tail);
  EXPECT_EQ(0, std::memcmp(whole.logits(), first.logits(), 2 * K * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(whole.logits() + 2 * K, second.logits(), (N - 2) * K * sizeof(float)));
  // And training mode is not eval mode: some unit was dropped.
  CpuNetwork eval(arch);
  eval.forward(ref::param_ptrs(m), x.data(), N);
  EXPECT_NE(0, std::memcmp(whole.logits(), eval.logits(), N * K * sizeof(float)));
}

}  // namespace
}  // namespace nudge
