#include "reference_math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>

namespace nudge::ref {

// ---- layers ---------------------------------------------------------------------------------------------------

// The loops put the output column innermost so that they vectorize; the sums are still plain double sums.
// Input element (c, oh*s - p + i, ow*s - p + j) of image n, or -1 in the padding.
namespace {
long long tap(Shape3 in, int n, int c, Window win, int oh, int ow, int i, int j) {
  const int h = oh * win.stride - win.pad + i, w = ow * win.stride - win.pad + j;
  if (h < 0 || h >= in.h || w < 0 || w >= in.w) return -1;
  return ((static_cast<long long>(n) * in.c + c) * in.h + h) * in.w + w;
}
}  // namespace

std::vector<double> conv2d_forward(const std::vector<double>& x, int N, Shape3 in, const std::vector<double>& w,
                                   const std::vector<double>& b, int K, Window win) {
  const int k = win.k, Ho = win.out(in.h), Wo = win.out(in.w);
  std::vector<double> y(static_cast<size_t>(N) * K * Ho * Wo);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < K; ++o)
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          double s = b[o];
          for (int c = 0; c < in.c; ++c)
            for (int i = 0; i < k; ++i)
              for (int j = 0; j < k; ++j) {
                const long long t = tap(in, n, c, win, oh, ow, i, j);
                if (t >= 0) s += w[((static_cast<size_t>(o) * in.c + c) * k + i) * k + j] * x[t];
              }
          y[((static_cast<size_t>(n) * K + o) * Ho + oh) * Wo + ow] = s;
        }
  return y;
}

std::vector<double> conv2d_backward_data(const std::vector<double>& dy, int N, Shape3 in, const std::vector<double>& w,
                                         int K, Window win) {
  const int k = win.k, Ho = win.out(in.h), Wo = win.out(in.w);
  std::vector<double> dx(static_cast<size_t>(N) * in.size(), 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < K; ++o)
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          const double g = dy[((static_cast<size_t>(n) * K + o) * Ho + oh) * Wo + ow];
          for (int c = 0; c < in.c; ++c)
            for (int i = 0; i < k; ++i)
              for (int j = 0; j < k; ++j) {
                const long long t = tap(in, n, c, win, oh, ow, i, j);
                if (t >= 0) dx[t] += w[((static_cast<size_t>(o) * in.c + c) * k + i) * k + j] * g;
              }
        }
  return dx;
}

void conv2d_backward_filter(const std::vector<double>& x, const std::vector<double>& dy, int N, Shape3 in, int K,
                            Window win, std::vector<double>& dw, std::vector<double>& db) {
  const int k = win.k, Ho = win.out(in.h), Wo = win.out(in.w);
  dw.assign(static_cast<size_t>(K) * in.c * k * k, 0.0);
  db.assign(K, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < K; ++o)
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          const double g = dy[((static_cast<size_t>(n) * K + o) * Ho + oh) * Wo + ow];
          db[o] += g;
          for (int c = 0; c < in.c; ++c)
            for (int i = 0; i < k; ++i)
              for (int j = 0; j < k; ++j) {
                const long long t = tap(in, n, c, win, oh, ow, i, j);
                if (t >= 0) dw[((static_cast<size_t>(o) * in.c + c) * k + i) * k + j] += g * x[t];
              }
        }
}

std::vector<double> relu_forward(const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] > 0 ? x[i] : 0.0;
  return y;
}

std::vector<double> relu_backward(const std::vector<double>& y, const std::vector<double>& dy) {
  std::vector<double> dx(y.size());
  for (size_t i = 0; i < y.size(); ++i) dx[i] = y[i] > 0 ? dy[i] : 0.0;
  return dx;
}

void maxpool_forward(const std::vector<double>& x, int N, Shape3 in, Window win, std::vector<double>& y,
                     std::vector<int32_t>& argmax) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  y.assign(static_cast<size_t>(N) * in.c * Ho * Wo, 0.0);
  argmax.assign(y.size(), -1);
  for (int nc = 0; nc < N * in.c; ++nc)
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow) {
        long long best = -1;
        for (int i = 0; i < win.k; ++i)
          for (int j = 0; j < win.k; ++j) {
            const long long t = tap(in, 0, nc, win, oh, ow, i, j);  // image 0 with channel nc: the same offset
            if (t >= 0 && (best < 0 || x[t] > x[best])) best = t;
          }
        const size_t o = (static_cast<size_t>(nc) * Ho + oh) * Wo + ow;
        y[o] = x[best];
        argmax[o] = static_cast<int32_t>(best - static_cast<long long>(nc) * in.h * in.w);
      }
}

std::vector<double> maxpool_backward(const std::vector<double>& dy, const std::vector<int32_t>& argmax, int N,
                                     Shape3 in, Window win) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  std::vector<double> dx(static_cast<size_t>(N) * in.size(), 0.0);
  for (int nc = 0; nc < N * in.c; ++nc)
    for (int o = 0; o < Ho * Wo; ++o)
      dx[static_cast<size_t>(nc) * in.h * in.w + argmax[static_cast<size_t>(nc) * Ho * Wo + o]] +=
          dy[static_cast<size_t>(nc) * Ho * Wo + o];
  return dx;
}

std::vector<double> avgpool_forward(const std::vector<double>& x, int N, Shape3 in, Window win) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  std::vector<double> y(static_cast<size_t>(N) * in.c * Ho * Wo, 0.0);
  for (int nc = 0; nc < N * in.c; ++nc)
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow) {
        double s = 0;
        for (int i = 0; i < win.k; ++i)
          for (int j = 0; j < win.k; ++j) s += x[tap(in, 0, nc, win, oh, ow, i, j)];
        y[(static_cast<size_t>(nc) * Ho + oh) * Wo + ow] = s / (win.k * win.k);
      }
  return y;
}

std::vector<double> avgpool_backward(const std::vector<double>& dy, int N, Shape3 in, Window win) {
  const int Ho = win.out(in.h), Wo = win.out(in.w);
  std::vector<double> dx(static_cast<size_t>(N) * in.size(), 0.0);
  for (int nc = 0; nc < N * in.c; ++nc)
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow)
        for (int i = 0; i < win.k; ++i)
          for (int j = 0; j < win.k; ++j)
            dx[tap(in, 0, nc, win, oh, ow, i, j)] += dy[(static_cast<size_t>(nc) * Ho + oh) * Wo + ow] / (win.k * win.k);
  return dx;
}

std::vector<double> dense_forward(const std::vector<double>& x, int N, int in, const std::vector<double>& w,
                                  const std::vector<double>& b, int out) {
  std::vector<double> y(static_cast<size_t>(N) * out);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) {
      double s = b[o];
      for (int i = 0; i < in; ++i) s += w[static_cast<size_t>(o) * in + i] * x[static_cast<size_t>(n) * in + i];
      y[static_cast<size_t>(n) * out + o] = s;
    }
  return y;
}

std::vector<double> dense_backward_data(const std::vector<double>& dy, int N, int in, const std::vector<double>& w,
                                        int out) {
  std::vector<double> dx(static_cast<size_t>(N) * in, 0.0);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < in; ++i) {
      double s = 0;
      for (int o = 0; o < out; ++o) s += dy[static_cast<size_t>(n) * out + o] * w[static_cast<size_t>(o) * in + i];
      dx[static_cast<size_t>(n) * in + i] = s;
    }
  return dx;
}

void dense_backward_params(const std::vector<double>& x, const std::vector<double>& dy, int N, int in, int out,
                           std::vector<double>& dw, std::vector<double>& db) {
  dw.assign(static_cast<size_t>(out) * in, 0.0);
  db.assign(out, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) {
      const double g = dy[static_cast<size_t>(n) * out + o];
      db[o] += g;
      for (int i = 0; i < in; ++i) dw[static_cast<size_t>(o) * in + i] += g * x[static_cast<size_t>(n) * in + i];
    }
}

std::vector<double> batch_norm_forward(const std::vector<double>& x, int N, int C, int P, const std::vector<double>& gamma,
                                       const std::vector<double>& beta, std::vector<double>& mean,
                                       std::vector<double>& var, bool batch_stats) {
  auto at = [&](int n, int c, int p) { return (static_cast<size_t>(n) * C + c) * P + p; };
  if (batch_stats) {
    mean.assign(C, 0.0);
    var.assign(C, 0.0);
    const double M = static_cast<double>(N) * P;
    for (int c = 0; c < C; ++c) {
      for (int n = 0; n < N; ++n)
        for (int p = 0; p < P; ++p) mean[c] += x[at(n, c, p)];
      mean[c] /= M;
      for (int n = 0; n < N; ++n)
        for (int p = 0; p < P; ++p) var[c] += (x[at(n, c, p)] - mean[c]) * (x[at(n, c, p)] - mean[c]);
      var[c] /= M;
    }
  }
  std::vector<double> y(x.size());
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < P; ++p)
        y[at(n, c, p)] = gamma[c] * (x[at(n, c, p)] - mean[c]) / std::sqrt(var[c] + 1e-5) + beta[c];
  return y;
}

// ---- whole network --------------------------------------------------------------------------------------------

std::vector<double> network_forward(const Architecture& arch, const std::vector<std::vector<double>>& params,
                                    const std::vector<double>& x, int N, ForwardTrace* trace,
                                    const TrainMode* train) {
  if (trace) *trace = ForwardTrace{};
  std::vector<double> a = x;
  size_t p = 0;
  int dropouts = 0;
  for (const LayerSpec& l : arch.layers) {
    switch (l.kind) {
      case LayerKind::Conv:
        a = conv2d_forward(a, N, l.in, params[p], params[p + 1], l.out_channels, l.window());
        p += 2;
        break;
      case LayerKind::Relu:
        if (trace)
          for (double v : a) {
            trace->relu_positive.push_back(v > 0);
            trace->min_relu_margin = std::min(trace->min_relu_margin, std::fabs(v));
          }
        a = relu_forward(a);
        break;
      case LayerKind::MaxPool: {
        std::vector<double> y;
        std::vector<int32_t> am;
        maxpool_forward(a, N, l.in, l.window(), y, am);
        if (trace) {
          trace->pool_argmax.insert(trace->pool_argmax.end(), am.begin(), am.end());
          // Runner-up of each window: the largest element other than the argmax.
          const int Ho = l.out.h, Wo = l.out.w, q = l.kernel;
          for (int nc = 0; nc < N * l.in.c; ++nc)
            for (int oh = 0; oh < Ho; ++oh)
              for (int ow = 0; ow < Wo; ++ow) {
                const size_t o = (static_cast<size_t>(nc) * Ho + oh) * Wo + ow;
                double second = -std::numeric_limits<double>::infinity();
                for (int i = 0; i < q; ++i)
                  for (int j = 0; j < q; ++j) {
                    const long long t = tap(l.in, 0, nc, l.window(), oh, ow, i, j);
                    if (t >= 0 && t - static_cast<long long>(nc) * l.in.h * l.in.w != am[o])
                      second = std::max(second, a[t]);
                  }
                // A window of ReLU zeros ties exactly but harmlessly: no gradient flows through any of them.
                if (q > 1 && y[o] != 0.0) trace->min_pool_gap = std::min(trace->min_pool_gap, y[o] - second);
              }
        }
        a = std::move(y);
        break;
      }
      case LayerKind::AvgPool: a = avgpool_forward(a, N, l.in, l.window()); break;
      case LayerKind::Flatten: break;
      case LayerKind::Dense:
        a = dense_forward(a, N, l.in.size(), params[p], params[p + 1], l.out_channels);
        p += 2;
        break;
      case LayerKind::BatchNorm: {
        std::vector<double> mean = params[p + 2], var = params[p + 3];
        a = batch_norm_forward(a, N, l.out.c, l.out.h * l.out.w, params[p], params[p + 1], mean, var, train != nullptr);
        p += 4;
        break;
      }
      case LayerKind::Dropout: {
        const int ordinal = dropouts++;
        if (!train) break;
        const double scale = 1.0 / (1.0 - l.drop_ppm * 1e-6);
        const int units = static_cast<int>(l.out.size());
        for (int n = 0; n < N; ++n)
          for (int u = 0; u < units; ++u) {
            double& v = a[static_cast<size_t>(n) * units + u];
            v = train->keeps(ordinal, n, u) ? v * scale : 0.0;
          }
        break;
      }
    }
  }
  return a;
}

std::vector<std::vector<double>> params_to_double(const Model& model) {
  std::vector<std::vector<double>> p;
  for (const Tensor& t : model.params) p.emplace_back(t.data.begin(), t.data.end());
  return p;
}

// ---- losses ---------------------------------------------------------------------------------------------------

namespace {

// log sum_{j != skip} exp(z_j).
double log_sum_exp(const double* z, int K, int skip) {
  double m = -std::numeric_limits<double>::infinity();
  for (int j = 0; j < K; ++j)
    if (j != skip) m = std::max(m, z[j]);
  double s = 0;
  for (int j = 0; j < K; ++j)
    if (j != skip) s += std::exp(z[j] - m);
  return m + std::log(s);
}

}  // namespace

std::vector<double> softmax(const double* z, int K) {
  const double lse = log_sum_exp(z, K, -1);
  std::vector<double> p(K);
  for (int j = 0; j < K; ++j) p[j] = std::exp(z[j] - lse);
  return p;
}

double loss_one(const double* z, int K, const double* t, TargetKind kind, int cls, LossKind loss, double kappa,
                int* branch) {
  if (branch) *branch = 0;
  if (loss == LossKind::CarliniWagner && kind != TargetKind::Soft) {
    int other = -1;
    for (int j = 0; j < K; ++j)
      if (j != cls && (other < 0 || z[j] > z[other])) other = j;
    const double margin = kind == TargetKind::OneHot ? z[other] - z[cls] : z[cls] - z[other];
    const bool active = margin > -kappa;
    if (branch) *branch = 2 * other + (active ? 1 : 0);
    return active ? margin : -kappa;
  }
  const double lse = log_sum_exp(z, K, -1);
  if (kind == TargetKind::Untargeted) return lse - log_sum_exp(z, K, cls);  // -log(1 - p_y)
  double ce = 0, entropy = 0;
  for (int j = 0; j < K; ++j)
    if (t[j] > 0) {
      ce -= t[j] * (z[j] - lse);
      entropy -= t[j] * std::log(t[j]);
    }
  return loss == LossKind::KL ? ce - entropy : ce;
}

// ---- checks and fills -----------------------------------------------------------------------------------------

namespace {

template <typename T>
CloseStats check_close(const T* got, const double* ref, size_t n, double rtol, double atol, const std::string& what) {
  CloseStats s;
  double worst_ratio = -1;
  std::ostringstream pairs;
  int shown = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]);
    const double err = std::fabs(g - ref[i]);
    const double bound = atol + rtol * std::fabs(ref[i]);
    const bool ok = err <= bound;  // false for NaN
    // A NaN counts as the worst possible element.
    const double ratio = std::isnan(err) ? std::numeric_limits<double>::infinity() : err / bound;
    if (!std::isnan(err)) {
      s.max_abs = std::max(s.max_abs, err);
      if (ref[i] != 0) s.max_rel = std::max(s.max_rel, err / std::fabs(ref[i]));
    }
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      s.worst = i;
    }
    if (!ok) {
      ++s.mismatches;
      if (shown < 8) {
        pairs << "\n    [" << i << "] got " << g << " ref " << ref[i] << " |diff| " << err << " bound " << bound;
        ++shown;
      }
    }
  }
  std::ostringstream head;
  head.precision(3);
  head << what << ": " << n << " elements, max abs err " << s.max_abs << ", max rel err " << s.max_rel
       << ", worst index " << s.worst;
  if (n) head << " (got " << static_cast<double>(got[s.worst]) << ", ref " << ref[s.worst] << ")";
  head << "; bound atol " << atol << " + rtol " << rtol << " * |ref|";
  if (s.mismatches) {
    ADD_FAILURE() << head.str() << "\n  " << s.mismatches << " mismatches, first ones:" << pairs.str();
  } else if (std::getenv("NUDGE_PRINT_ERRORS")) {
    std::printf("[errors] %s\n", head.str().c_str());
  }
  return s;
}

constexpr uint32_t kGuardBits = 0x7FE5A5A5u;  // a quiet-NaN payload no arithmetic produces
constexpr int32_t kGuardIndex = 0x5A5A5A5A;

}  // namespace

CloseStats expect_close(const float* got, const double* ref, size_t n, double rtol, double atol,
                        const std::string& what) {
  return check_close(got, ref, n, rtol, atol, what);
}

CloseStats expect_close(const double* got, const double* ref, size_t n, double rtol, double atol,
                        const std::string& what) {
  return check_close(got, ref, n, rtol, atol, what);
}

CloseStats expect_close(const std::vector<float>& got, const std::vector<double>& ref, double rtol, double atol,
                        const std::string& what) {
  if (got.size() != ref.size()) {
    ADD_FAILURE() << what << ": got " << got.size() << " elements, the reference has " << ref.size();
    return {};
  }
  return check_close(got.data(), ref.data(), got.size(), rtol, atol, what);
}

std::vector<float> random_uniform(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
std::vector<double> to_double(const float* v, size_t n) { return std::vector<double>(v, v + n); }

Model random_model(const Architecture& arch, uint32_t seed, float bias) {
  Model m = Model::glorot(arch, seed);
  const auto specs = arch.params();
  for (size_t i = 0; i < specs.size(); ++i) {
    const uint32_t s = seed * 7919u + static_cast<uint32_t>(i);
    if (specs[i].is_bias) {
      m.params[i].data = random_uniform(m.params[i].size(), -bias, bias, s);
    } else if (arch.layers[specs[i].layer].kind == LayerKind::BatchNorm) {
      // Scale, running mean and running variance away from the identity, so that a fold or an eval forward that
      // forgot one of them shows: scale in [0.5,1.5], mean in [-0.5,0.5], variance in [0.5,2].
      const bool mean = specs[i].is_buffer && specs[i].init == ParamInit::Zero;
      const bool var = specs[i].is_buffer && specs[i].init == ParamInit::One;
      m.params[i].data = random_uniform(m.params[i].size(), mean ? -0.5f : 0.5f, mean ? 0.5f : var ? 2.0f : 1.5f, s);
    }
  }
  return m;
}

std::vector<const float*> param_ptrs(const Model& model) {
  std::vector<const float*> p;
  for (const Tensor& t : model.params) p.push_back(t.ptr());
  return p;
}

GuardedBuffer::GuardedBuffer(size_t n) : n_(n), buf_(n + kGuard) {
  float guard;
  std::memcpy(&guard, &kGuardBits, sizeof guard);
  std::fill(buf_.begin() + n_, buf_.end(), guard);
  poison();
}

void GuardedBuffer::poison() {
  std::fill(buf_.begin(), buf_.begin() + n_, std::numeric_limits<float>::quiet_NaN());
}

void GuardedBuffer::expect_guard_intact(const std::string& what) const {
  for (size_t i = n_; i < buf_.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &buf_[i], sizeof bits);
    if (bits != kGuardBits) {
      ADD_FAILURE() << what << ": stray write at element " << i << " of a " << n_ << "-element output ("
                    << (i - n_) << " past the end; found " << buf_[i] << ")";
      return;
    }
  }
}

GuardedIndexBuffer::GuardedIndexBuffer(size_t n) : n_(n), buf_(n + kGuard, kGuardIndex) {
  std::fill(buf_.begin(), buf_.begin() + n_, -1);
}

void GuardedIndexBuffer::expect_guard_intact(const std::string& what) const {
  for (size_t i = n_; i < buf_.size(); ++i)
    if (buf_[i] != kGuardIndex) {
      ADD_FAILURE() << what << ": stray write at element " << i << " of a " << n_ << "-element index output ("
                    << (i - n_) << " past the end; found " << buf_[i] << ")";
      return;
    }
}

}  // namespace nudge::ref
