// CPU layers that behave differently in training: batch normalisation and dropout. Layout [N, C, P] (P = H*W after a
// conv, 1 after a dense layer, where C is the features). Statistics and per-element arithmetic in double, rounded
// once to float, so the error against the double oracle is a float rounding of the output (tests/test_cpu_layers.cpp).
// Inference runs folded models (model_fold.h) and meets neither layer; the eval forms here serve tests and the
// unfolded network.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nudge::cpu {

// Training forward: mean[c] and the biased var[c] of x over N and P (two passes, in double), then
// y = gamma (x - mean) / sqrt(var + eps) + beta.
void batch_norm_forward_train(const float* x, int N, int C, int P, const float* gamma, const float* beta, float* y,
                              double* mean, double* var);
// Eval forward with given statistics (the running ones), the same formula.
void batch_norm_forward_eval(const float* x, int N, int C, int P, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float* y);
// Backward through either form, with the mean and var the forward normalised with. batch_stats: they were the
// batch's, so they depend on x too (the training backward); else constants (eval). dgamma [C] and dbeta [C] are
// overwritten; dx [N,C,P] too, when not null.
void batch_norm_backward(const float* x, const float* dy, int N, int C, int P, const float* gamma, const double* mean,
                         const double* var, bool batch_stats, float* dx, float* dgamma, float* dbeta);
// The running statistics' update of one training step, as PyTorch does it (momentum 0.1): mean moves towards the
// batch mean, var towards the unbiased batch variance var * M / (M - 1) with M = N*P values per channel (M >= 2).
void batch_norm_update_running(const double* mean, const double* var, int C, int64_t M, float* running_mean,
                               float* running_var);

// Inverted dropout of `rows` rows of `units` values: keep[r*units + u] from dropout_keeps (dropout_mask.h) with row
// key row_keys[r], y = keep ? x * scale : 0. dx = keep ? dy * scale : 0.
void dropout_mask(uint64_t seed, uint64_t step, const uint32_t* row_keys, int rows, uint32_t ordinal, int units,
                  float p, uint8_t* keep);
void dropout_forward(const float* x, const uint8_t* keep, size_t n, float scale, float* y);
void dropout_backward(const float* dy, const uint8_t* keep, size_t n, float scale, float* dx);

}  // namespace nudge::cpu
