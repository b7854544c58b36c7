#include "cpu_train_layers.h"

#include <cmath>
#include <vector>

#include "architecture.h"
#include "dropout_mask.h"

namespace nudge::cpu {

namespace {

// y = (x - mean) / sqrt(var + eps) * gamma + beta per channel, in double.
void normalise(const float* x, int N, int C, int P, const float* gamma, const float* beta, const double* mean,
               const double* var, float* y) {
  for (int c = 0; c < C; ++c) {
    const double inv = 1.0 / std::sqrt(var[c] + kBatchNormEps), g = gamma[c], b = beta[c], m = mean[c];
    for (int n = 0; n < N; ++n) {
      const size_t o = (static_cast<size_t>(n) * C + c) * P;
      for (int p = 0; p < P; ++p) y[o + p] = static_cast<float>((x[o + p] - m) * inv * g + b);
    }
  }
}

}  // namespace

void batch_norm_forward_train(const float* x, int N, int C, int P, const float* gamma, const float* beta, float* y,
                              double* mean, double* var) {
  const double M = static_cast<double>(N) * P;
  for (int c = 0; c < C; ++c) {
    // Two passes: the variance as a mean of squared deviations, not E[x^2] - E[x]^2, which cancels.
    double s = 0;
    for (int n = 0; n < N; ++n) {
      const float* xc = x + (static_cast<size_t>(n) * C + c) * P;
      for (int p = 0; p < P; ++p) s += xc[p];
    }
    const double m = s / M;
    double q = 0;
    for (int n = 0; n < N; ++n) {
      const float* xc = x + (static_cast<size_t>(n) * C + c) * P;
      for (int p = 0; p < P; ++p) q += (xc[p] - m) * (xc[p] - m);
    }
    mean[c] = m;
    var[c] = q / M;
  }
  normalise(x, N, C, P, gamma, beta, mean, var, y);
}

void batch_norm_forward_eval(const float* x, int N, int C, int P, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float* y) {
  const std::vector<double> mean(running_mean, running_mean + C), var(running_var, running_var + C);
  normalise(x, N, C, P, gamma, beta, mean.data(), var.data(), y);
}

void batch_norm_backward(const float* x, const float* dy, int N, int C, int P, const float* gamma, const double* mean,
                         const double* var, bool batch_stats, float* dx, float* dgamma, float* dbeta) {
  const double M = static_cast<double>(N) * P;
  for (int c = 0; c < C; ++c) {
    const double inv = 1.0 / std::sqrt(var[c] + kBatchNormEps), m = mean[c];
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int n = 0; n < N; ++n) {
      const size_t o = (static_cast<size_t>(n) * C + c) * P;
      for (int p = 0; p < P; ++p) {
        sum_dy += dy[o + p];
        sum_dy_xhat += dy[o + p] * ((x[o + p] - m) * inv);
      }
    }
    dgamma[c] = static_cast<float>(sum_dy_xhat);
    dbeta[c] = static_cast<float>(sum_dy);
    if (!dx) continue;
    const double g = gamma[c] * inv;
    // With batch statistics, xhat = (x - mean(x)) / sqrt(var(x) + eps) and the mean and variance carry gradient:
    // dx = gamma inv (dy - mean(dy) - xhat mean(dy xhat)).
    const double mean_dy = batch_stats ? sum_dy / M : 0, mean_dy_xhat = batch_stats ? sum_dy_xhat / M : 0;
    for (int n = 0; n < N; ++n) {
      const size_t o = (static_cast<size_t>(n) * C + c) * P;
      for (int p = 0; p < P; ++p) {
        const double xhat = (x[o + p] - m) * inv;
        dx[o + p] = static_cast<float>(g * (dy[o + p] - mean_dy - xhat * mean_dy_xhat));
      }
    }
  }
}

void batch_norm_update_running(const double* mean, const double* var, int C, int64_t M, float* running_mean,
                               float* running_var) {
  const double unbiased = static_cast<double>(M) / static_cast<double>(M - 1);
  for (int c = 0; c < C; ++c) {
    running_mean[c] = static_cast<float>((1 - kBatchNormMomentum) * running_mean[c] + kBatchNormMomentum * mean[c]);
    running_var[c] = static_cast<float>((1 - kBatchNormMomentum) * running_var[c] + kBatchNormMomentum * var[c] * unbiased);
  }
}

void dropout_mask(uint64_t seed, uint64_t step, const uint32_t* row_keys, int rows, uint32_t ordinal, int units,
                  float p, uint8_t* keep) {
  // dropout_keeps unit by unit, but one Philox block for each four units instead of one per unit.
  for (int r = 0; r < rows; ++r) {
    uint8_t* k = keep + static_cast<size_t>(r) * units;
    const uint64_t index = step << 32 | row_keys[r];
    for (int u = 0; u < units; u += 4) {
      const Philox4 bits = counter_random(seed, kStreamDropout, index, (ordinal << 24 | static_cast<uint32_t>(u)) >> 2);
      for (int j = 0; j < 4 && u + j < units; ++j) k[u + j] = uniform_from_bits(bits.v[j]) >= p;
    }
  }
}

void dropout_forward(const float* x, const uint8_t* keep, size_t n, float scale, float* y) {
  for (size_t i = 0; i < n; ++i) y[i] = keep[i] ? x[i] * scale : 0.0f;
}

void dropout_backward(const float* dy, const uint8_t* keep, size_t n, float scale, float* dx) {
  for (size_t i = 0; i < n; ++i) dx[i] = keep[i] ? dy[i] * scale : 0.0f;
}

}  // namespace nudge::cpu
