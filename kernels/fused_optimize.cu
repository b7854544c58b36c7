/* Fused input optimization for the reference architecture (design, budgets and floors: docs/fused-kernel.md).
 *
 *   1x28x28 -> conv3x3 24 -> ReLU -> pool2 (13x13) -> conv3x3 36 -> ReLU -> pool2 floor (5x5, reads 10x10 of 11x11)
 *           -> conv3x3 64 -> ReLU -> flatten (C,H,W) 576 -> dense 64 -> ReLU -> dense 10
 *
 * What:     per launch, `steps` optimize steps (+ an evaluation-only pass with final_eval) for every row of the
 *           active list; per step and image: forward, softmax loss and its logit gradient, goal test and best-iterate
 *           bookkeeping (first goal-meeting iterate kept for good, else the lowest loss), early stop, backward to
 *           the input (no weight gradients), Adam/SGD/sign step, L-inf/L2 projection onto the eps-ball, clamp to
 *           [0,1]. Exactly CpuOptimizeChunk::evaluate_and_update's semantics.
 * Layout:   per-entry state in global memory [entries, 784] / [entries, 10]; weights packed once into the layouts
 *           below (fused_pack_weights_*); activations only in shared memory.
 * Threads:  448 per block (14 warps, up to 144 registers each), one block per SM (218 KB of shared memory).
 *           A block loops over tiles of up to 8 rows and keeps a tile for all the launch's steps. Each step is a
 *           fixed sequence of phases separated by __syncthreads(); inside a phase a thread writes only what it owns,
 *           and the mapping of each phase is written next to it. Entries that stop leave the tile's live list at
 *           once; the live images are packed into slots 0..ni-1 at the start of every step.
 * Precond.: the reference architecture (fused_path_supports); rows distinct; target_class in [0,10) unless Soft;
 *           Adam needs m and v, a norm needs eps; a device with >= 218 KB shared memory per block (sm_90: 227 KB).
 * Numerics: FP32 with FMA contraction, sums in another order than OpenBLAS; the loss, goal test and L2 norm follow
 *           the CPU twins operation by operation (double exp/log/sum). Pool ties go to the first in row-major
 *           order. Deterministic: an entry's results do not depend on its tile-mates, the tile size, the grid or
 *           the steps per launch (every image's arithmetic runs the same instruction sequence).
 * Checked by tests/test_cuda_fused.cpp: against the CPU backend (on a GPU, and on the host through
 * fused_optimize_emulate, which runs this very block code), thread-order and tile-size invariance, poisoned and
 * guarded outputs, frozen early-stopped entries.
 *
 * Why it is written as lambdas over an executor: the block code is a template over `Block`, whose phase(f) is
 * f(threadIdx.x) + __syncthreads() on the device and a loop over the 448 thread ids on the host. The same source
 * therefore runs, unchanged, in the host emulation that the tests use where there is no GPU.
 *
 * Cost (docs/fused-kernel.md): 2.68M FMAs issued per image-step (5.24 MFLOP of dense forward + backward-to-input
 * work), ~3.5M thread-instructions; predicted ~170-200 ns per image-step on an H100 SXM against an FP32 floor of
 * 78 ns. Not yet measured.
 */
#include "fused_optimize.cuh"

#include <cmath>
#include <string>
#include <vector>

#include "cuda_check.h"

namespace nudge::cuda {

namespace {

#define FUSED_HD __host__ __device__ __forceinline__
// Unrolling hints for the device compiler only: the host compiler sees this code too (the emulation) and would warn.
#define FUSED_PRAGMA(x) _Pragma(#x)
#ifdef __CUDA_ARCH__
#define FUSED_UNROLL(n) FUSED_PRAGMA(unroll n)
#define FUSED_UNROLL_ALL FUSED_PRAGMA(unroll)
#else
#define FUSED_UNROLL(n)
#define FUSED_UNROLL_ALL
#endif

// ---- shapes (the reference architecture, fixed at compile time) ----------------------------------------------------
// 448 threads = 14 warps: 65536 / 448 leaves 144 registers per thread, which conv2's 72-accumulator tiles need
// beside the kernel's own state (at 512 threads, 128 registers, ptxas spilled).
constexpr int kThreads = 448;
constexpr int kTile = kFusedTileMax;
constexpr int kIn = 28, kD = kIn * kIn;            // input 1x28x28
constexpr int kC1 = 24, kP1 = 13;                  // conv1 -> 24x26x26, pool1 -> 24x13x13
constexpr int kP1Plane = kP1 * kP1, kP1Size = kC1 * kP1Plane;  // 169, 4056
constexpr int kC2 = 36, kP2 = 5;                   // conv2 -> 36x11x11, pool2 -> 36x5x5 (rows/cols 0..9 only)
constexpr int kP2Plane = kP2 * kP2, kP2Size = kC2 * kP2Plane;  // 25, 900
constexpr int kC3 = 64, kA3Plane = 9;              // conv3 -> 64x3x3
constexpr int kFlat = kC3 * kA3Plane;              // 576
constexpr int kF1 = 64, kK = 10;

// ---- packed weights (floats). Segments start on 16-byte boundaries: W1+W2 and W3 are staged with float4. ----------
constexpr int kPkW1 = 0;                           // conv1 [tap][c]
constexpr int kPkB1 = kPkW1 + 9 * kC1;             // 216
constexpr int kPkW2 = kPkB1 + kC1;                 // 240: conv2 [ci][tap][co], co contiguous
constexpr int kPkB2 = kPkW2 + kC1 * 9 * kC2;       // 8016
constexpr int kPkW3 = kPkB2 + kC2;                 // 8052: conv3 [row][325], row(co) = (co & 1) * 32 + co / 2
constexpr int kW3Pitch = kC2 * 9 + 1;              // 325: odd, so both conv3 passes read it without bank conflicts
constexpr int kPkB3 = kPkW3 + kC3 * kW3Pitch;      // 28852
constexpr int kPkW4T = kPkB3 + kC3;                // 28916: dense1 [in][out] (forward: lanes over outputs)
constexpr int kPkW4 = kPkW4T + kFlat * kF1;        // 65780: dense1 [out][in] (backward: lanes over inputs)
constexpr int kPkB4 = kPkW4 + kF1 * kFlat;         // 102644
constexpr int kPkW5 = kPkB4 + kF1;                 // 102708: dense2 [out][in]
constexpr int kPkB5 = kPkW5 + kK * kF1;            // 103348
constexpr int kPkCount = kPkB5 + 12;               // 103360 (10 biases + 2 zeros)
constexpr int kStageW12 = kPkW3;                   // floats staged once per block: conv1 + conv2 with biases
constexpr int kStageW3 = kPkW4T - kPkW3;           // floats staged per step: conv3 with bias (20864)
static_assert(kPkW3 % 4 == 0 && kPkW4T % 4 == 0 && kStageW12 % 4 == 0 && kStageW3 % 4 == 0, "float4 staging");

FUSED_HD int w3_row(int co) { return (co & 1) * 32 + (co >> 1); }

// ---- shared memory (floats from the base). Per-image regions are indexed by live slot k < ni. ---------------------
constexpr int kSmW = 0;                            // staged conv1/conv2 weights, same layout as packed [0, kPkW3)
constexpr int kSmR1 = kSmW + kStageW12;            // 8 x 4056: pool1 -> (block scratch) -> dP1
constexpr int kSmR2 = kSmR1 + kTile * kP1Size;     // 8 x 900: x -> pool2 -> dP2 -> dx -> new x (L2)
constexpr int kR2Stride = 900;
constexpr int kC1Words = kC1 * kP1;                // 312 64-bit words: 13 nibbles (one pooled row) each
constexpr int kSmC1 = kSmR2 + kTile * kR2Stride;   // 8 x 312 uint64
constexpr int kSmC2 = kSmC1 + kTile * kC1Words * 2;  // 8 x 900 bytes
constexpr int kSmMisc = kSmC2 + kTile * kP2Size / 4;  // 64 ints
constexpr int kSmFloats = kSmMisc + 64;
constexpr size_t kSmemBytes = sizeof(float) * kSmFloats;
static_assert(kSmemBytes <= 227 * 1024, "over the 227 KB an sm_90 block may use");
static_assert(kSmR1 % 4 == 0 && kSmR2 % 4 == 0 && kR2Stride % 4 == 0 && kSmC1 % 2 == 0, "alignment of regions");
static_assert(kD <= kR2Stride && kP2Size <= kR2Stride, "R2 holds x, pool2 and dx");

// Block scratch inside R1 while pool1 is dead (after conv2 forward, before conv2 backward).
constexpr int kScW3 = 0;                           // staged conv3 weights + bias
constexpr int kScA3 = kScW3 + kStageW3;            // 8 x 576 conv3 output -> dA3
constexpr int kSplits = 8;                         // K-slices of dense1 forward
constexpr int kSliceLen = kFlat / kSplits;         // 72
constexpr int kScD1P = kScA3 + kTile * kFlat;      // [8 slices][8 images][64] partial sums
constexpr int kScA4 = kScD1P + kSplits * kTile * kF1;  // 8 x 64 dense1 output -> dA4
constexpr int kScZ = kScA4 + kTile * kF1;          // 8 x 16 logits
constexpr int kScDZ = kScZ + kTile * 16;           // 8 x 16 logit gradients
constexpr int kScPR = kScDZ + kTile * 16;          // 8 x 16 probabilities
constexpr int kScEnd = kScPR + kTile * 16;
constexpr int kScPS = 0;                           // 8 x 64 doubles: L2 partial sums during the update
static_assert(kScEnd <= kTile * kP1Size, "block scratch must fit in R1");
static_assert(kScA3 % 4 == 0, "scratch alignment");
static_assert(kSplits * kSliceLen == kFlat, "dense1 forward: whole slices");

// Misc ints.
constexpr int kMsEntry = 0;       // [8] entry of each tile slot
constexpr int kMsLive = 8;        // [8] slot still active
constexpr int kMsLiveSlot = 16;   // [8] tile slot of live image k
constexpr int kMsLiveEntry = 24;  // [8] entry of live image k
constexpr int kMsNLive = 32;
constexpr int kMsImproved = 40;   // [8] by live image: this iterate became the best one
constexpr int kMsStop = 48;       // [8] by live image: met its goal under early stopping (no update)
constexpr int kMsStepT = 56;      // [8] by live image: the update's 1-based step count

struct Smem {
  float* f;                   // base
  unsigned long long* c1;     // pool1 codes
  uint8_t* c2;                // pool2 codes
  int* misc;
  FUSED_HD float* w() const { return f + kSmW; }
  FUSED_HD float* r1(int k) const { return f + kSmR1 + k * kP1Size; }
  FUSED_HD float* r2(int k) const { return f + kSmR2 + k * kR2Stride; }
  FUSED_HD float* scratch() const { return f + kSmR1; }
};

FUSED_HD Smem make_smem(float* base) {
  Smem s;
  s.f = base;
  s.c1 = reinterpret_cast<unsigned long long*>(base + kSmC1);
  s.c2 = reinterpret_cast<uint8_t*>(base + kSmC2);
  s.misc = reinterpret_cast<int*>(base + kSmMisc);
  return s;
}

// ---- small helpers ----------------------------------------------------------------------------------------------
// Read-only data (weights, x0, targets) through the non-coherent cache; never for x, m, v or the best-* arrays,
// which this kernel writes.
template <class T>
FUSED_HD T ldg(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

FUSED_HD int imin(int a, int b) { return a < b ? a : b; }
FUSED_HD float relu(float x) { return x > 0.0f ? x : 0.0f; }  // as cpu::relu_forward (NaN -> 0)
FUSED_HD float clamp01(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }

// Bias, ReLU and 2x2 max-pool of one window's four conv outputs in row-major order, as cpu::relu_forward then
// cpu::maxpool_forward: a later element wins only if strictly greater. code = argmax (0..3) | 4 if the pooled value
// is positive (the ReLU then passes gradient to it).
FUSED_HD void relu_pool4(const float acc[4], float bias, float* value, unsigned* code) {
  int best = 0;
  float bv = relu(acc[0] + bias);
  FUSED_UNROLL_ALL
  for (int q = 1; q < 4; ++q) {
    const float r = relu(acc[q] + bias);
    if (r > bv) {
      bv = r;
      best = q;
    }
  }
  *value = bv;
  *code = static_cast<unsigned>(best) | (bv > 0.0f ? 4u : 0u);
}

// ---- loss and goal: the twins of loss_forward_backward_one and goal_met (host/core/losses.cpp), K = 10 -----------------
FUSED_HD void max_and_sum(const float* z, int skip, float* m_out, double* s_out) {
  float m = -INFINITY;
  for (int j = 0; j < kK; ++j)
    if (j != skip) m = m < z[j] ? z[j] : m;
  double s = 0;
  for (int j = 0; j < kK; ++j)
    if (j != skip) s += exp(static_cast<double>(z[j] - m));
  *m_out = m;
  *s_out = s;
}

FUSED_HD int argmax_except(const float* z, int skip) {
  int best = -1;
  for (int j = 0; j < kK; ++j)
    if (j != skip && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

// Writes probs and dz, returns the loss. t: the entry's target distribution (global memory, read-only).
FUSED_HD float loss_row(const float* z, const float* t, TargetKind kind, int cls, LossKind loss, float kappa,
                        float* probs, float* dz) {
  float m;
  double s;
  max_and_sum(z, -1, &m, &s);
  for (int j = 0; j < kK; ++j) probs[j] = static_cast<float>(exp(static_cast<double>(z[j] - m)) / s);
  // Review fix: the log-sum-exp in double, as the twin (losses.cpp log_sum_exp). In float, m + log(s) kept only
  // ~6e-8 of |lse| (1e-3 at logits of 1e4), so small losses (CE near p = 1, untargeted lse - lse_other) lost most
  // of their digits and the best-iterate comparison loss < best_loss could differ from the CPU's.
  const double lse = static_cast<double>(m) + log(s);
  if (loss == LossKind::CarliniWagner && kind != TargetKind::Soft) {
    const int other = argmax_except(z, cls);
    const float margin = kind == TargetKind::OneHot ? z[other] - z[cls] : z[cls] - z[other];
    const bool active = margin > -kappa;
    for (int j = 0; j < kK; ++j) dz[j] = 0.0f;
    if (active) {
      const float sg = kind == TargetKind::OneHot ? 1.0f : -1.0f;
      dz[other] += sg;
      dz[cls] -= sg;
    }
    return active ? margin : -kappa;
  }
  if (kind == TargetKind::Untargeted) {
    float m_o;
    double s_o;
    max_and_sum(z, cls, &m_o, &s_o);
    const double lse_other = static_cast<double>(m_o) + log(s_o);  // double, as the twin (see lse above)
    for (int j = 0; j < kK; ++j) {
      const float q = j == cls ? 0.0f : static_cast<float>(exp(static_cast<double>(z[j] - m_o)) / s_o);
      dz[j] = probs[j] - q;
    }
    return static_cast<float>(lse - lse_other);
  }
  double ce = 0, tsum = 0, entropy = 0;
  for (int j = 0; j < kK; ++j) {
    const float tj = ldg(t + j);
    tsum += tj;
    if (tj > 0) {
      ce -= static_cast<double>(tj) * (z[j] - lse);
      entropy -= static_cast<double>(tj) * log(static_cast<double>(tj));
    }
  }
  for (int j = 0; j < kK; ++j) dz[j] = static_cast<float>(probs[j] * tsum - ldg(t + j));
  return static_cast<float>(loss == LossKind::KL ? ce - entropy : ce);
}

FUSED_HD bool goal_met(const float* p, const float* t, TargetKind kind, int cls, float stop_prob, float stop_kl) {
  int top = 0;
  for (int j = 1; j < kK; ++j)
    if (p[j] > p[top]) top = j;
  switch (kind) {
    case TargetKind::OneHot: return stop_prob > 0 ? p[cls] >= stop_prob : top == cls;
    case TargetKind::Untargeted: return top != cls && (stop_prob <= 0 || p[cls] <= 1.0f - stop_prob);
    case TargetKind::Soft: {
      double kl = 0;
      for (int j = 0; j < kK; ++j) {
        const float tj = ldg(t + j);
        if (tj > 0) kl += tj * (log(static_cast<double>(tj)) - log(fmax(static_cast<double>(p[j]), 1e-45)));
      }
      return static_cast<float>(kl) <= stop_kl;
    }
  }
  return false;
}

// ---- the 4-class backward through ReLU + 2x2 max-pool + 3x3 valid convolution ------------------------------------
// A thread owns a 4x2 tile of the convolution's input gradient, rows 4*ti+dy, cols 2*tj+dx. The pool windows that
// can reach it are rows 2*ti-1+p (p = 0..2) and cols tj-1+q (q = 0..1). A window with gradient g, argmax (a,b)
// and a positive value adds g * w[ki][kj] at ki = dy + 2 - 2p - a, kj = dx + 2 - 2q - b (when both are in 0..2).
// Spreading each window's g into four "class" values G[p][q][2a+b] (g for its own argmax, 0 for the others) makes
// every tap a compile-time constant: 9 FMAs per output, no branch on data.
FUSED_HD void class_gradients(float g, unsigned code, float G[4]) {
  if (!(code & 4u)) g = 0.0f;
  FUSED_UNROLL_ALL
  for (int c = 0; c < 4; ++c) G[c] = (code & 3u) == static_cast<unsigned>(c) ? g : 0.0f;
}

FUSED_HD void class_fma(const float w[9], const float G[3][2][4], float acc[4][2]) {
  FUSED_UNROLL_ALL
  for (int dy = 0; dy < 4; ++dy)
    FUSED_UNROLL_ALL
    for (int dx = 0; dx < 2; ++dx)
      FUSED_UNROLL_ALL
      for (int p = 0; p < 3; ++p)
        FUSED_UNROLL_ALL
        for (int q = 0; q < 2; ++q)
          FUSED_UNROLL_ALL
          for (int a = 0; a < 2; ++a)
            FUSED_UNROLL_ALL
            for (int b = 0; b < 2; ++b) {
              const int ki = dy + 2 - 2 * p - a, kj = dx + 2 - 2 * q - b;
              if (ki >= 0 && ki <= 2 && kj >= 0 && kj <= 2) acc[dy][dx] += w[ki * 3 + kj] * G[p][q][a * 2 + b];
            }
}

// ---- one step of a tile ------------------------------------------------------------------------------------------
#pragma nv_exec_check_disable
template <class Block>
FUSED_HD void run_step(Block& blk, const FusedParams& p, const Smem& s, int ni, bool update) {
  const int* live_entry = s.misc + kMsLiveEntry;
  float* scratch = s.scratch();

  // Load x. Plain loads: this kernel writes x, so the read-only path is not allowed.
  blk.phase([&](int t) {
    constexpr int kQ = kD / 4;
    for (int i = t; i < ni * kQ; i += kThreads) {
      const int k = i / kQ, q = i % kQ;
      const float4* src = reinterpret_cast<const float4*>(p.x + static_cast<size_t>(live_entry[k]) * kD);
      reinterpret_cast<float4*>(s.r2(k))[q] = src[q];
    }
  });

  // conv1 + bias + ReLU + pool1. Thread = (6 channels, image, pooled row), all 13 windows of the row; lanes run over
  // rows and images so the weight loads are warp-uniform broadcasts. Owns its 6 rows of pool1 codes (one word each).
  blk.phase([&](int t) {
    const int per_group = ni * kP1;
    for (int it = t; it < 4 * per_group; it += kThreads) {
      const int g = it / per_group, k = (it % per_group) / kP1, py = it % kP1;
      const float* X = s.r2(k) + 2 * py * kIn;
      const float* W = s.w() + kPkW1 + 6 * g;
      float* P1 = s.r1(k) + 6 * g * kP1Plane + py * kP1;
      unsigned long long words[6] = {0, 0, 0, 0, 0, 0};
      FUSED_UNROLL(1)
      for (int px = 0; px < kP1; ++px) {
        float in[4][4];
        FUSED_UNROLL_ALL
        for (int a = 0; a < 4; ++a)
          FUSED_UNROLL_ALL
          for (int b = 0; b < 4; ++b) in[a][b] = X[a * kIn + 2 * px + b];
        float acc[6][4] = {};
        FUSED_UNROLL_ALL
        for (int tap = 0; tap < 9; ++tap) {
          const int ki = tap / 3, kj = tap % 3;
          const float2* wp = reinterpret_cast<const float2*>(W + tap * kC1);
          const float2 w01 = wp[0], w23 = wp[1], w45 = wp[2];
          const float w[6] = {w01.x, w01.y, w23.x, w23.y, w45.x, w45.y};
          FUSED_UNROLL_ALL
          for (int c = 0; c < 6; ++c)
            FUSED_UNROLL_ALL
            for (int d = 0; d < 4; ++d) acc[c][d] += w[c] * in[d / 2 + ki][d % 2 + kj];
        }
        FUSED_UNROLL_ALL
        for (int c = 0; c < 6; ++c) {
          float value;
          unsigned code;
          relu_pool4(acc[c], s.w()[kPkB1 + 6 * g + c], &value, &code);
          P1[c * kP1Plane + px] = value;
          words[c] |= static_cast<unsigned long long>(code) << (4 * px);
        }
      }
      FUSED_UNROLL_ALL
      for (int c = 0; c < 6; ++c) s.c1[k * kC1Words + (6 * g + c) * kP1 + py] = words[c];
    }
  });

  // conv2 + bias + ReLU + pool2 on the 10x10 outputs the floor pool keeps. Thread = (18 output channels, image,
  // window): 72 accumulators; per input channel 16 inputs and 81 warp-uniform float2 weight loads for 648 FMAs.
  blk.phase([&](int t) {
    const int per_group = ni * kP2Plane;
    for (int it = t; it < 2 * per_group; it += kThreads) {
      const int g = it / per_group, k = (it % per_group) / kP2Plane, win = it % kP2Plane;
      const int wy = win / kP2, wx = win % kP2;
      const float* P1 = s.r1(k) + 2 * wy * kP1 + 2 * wx;
      const float* W = s.w() + kPkW2 + 18 * g;
      float acc[18][4] = {};
      FUSED_UNROLL(1)
      for (int ci = 0; ci < kC1; ++ci) {
        float in[4][4];
        FUSED_UNROLL_ALL
        for (int a = 0; a < 4; ++a)
          FUSED_UNROLL_ALL
          for (int b = 0; b < 4; ++b) in[a][b] = P1[ci * kP1Plane + a * kP1 + b];
        FUSED_UNROLL_ALL
        for (int tap = 0; tap < 9; ++tap) {
          const int ki = tap / 3, kj = tap % 3;
          const float2* wp = reinterpret_cast<const float2*>(W + (ci * 9 + tap) * kC2);
          FUSED_UNROLL_ALL
          for (int r = 0; r < 9; ++r) {
            const float2 w = wp[r];
            FUSED_UNROLL_ALL
            for (int d = 0; d < 4; ++d) {
              acc[2 * r][d] += w.x * in[d / 2 + ki][d % 2 + kj];
              acc[2 * r + 1][d] += w.y * in[d / 2 + ki][d % 2 + kj];
            }
          }
        }
      }
      float* P2 = s.r2(k);  // x is dead: conv1 has read it
      uint8_t* C2 = s.c2 + k * kP2Size;
      FUSED_UNROLL_ALL
      for (int r = 0; r < 18; ++r) {
        const int co = 18 * g + r;
        float value;
        unsigned code;
        relu_pool4(acc[r], s.w()[kPkB2 + co], &value, &code);
        P2[co * kP2Plane + win] = value;
        C2[co * kP2Plane + win] = static_cast<uint8_t>(code);
      }
    }
  });

  // Stage conv3 into R1 (pool1 is dead now: its gradient mask lives in the codes).
  blk.phase([&](int t) {
    const float4* src = reinterpret_cast<const float4*>(p.weights + kPkW3);
    float4* dst = reinterpret_cast<float4*>(scratch + kScW3);
    for (int i = t; i < kStageW3 / 4; i += kThreads) dst[i] = ldg(src + i);
  });

  // conv3 + bias + ReLU. Thread = (image, output channels 2cp and 2cp+1), all 9 positions; a warp is one image, so
  // the 25 input loads per channel are broadcasts, and lanes read weight rows 325 floats apart (conflict-free).
  blk.phase([&](int t) {
    const float* W3 = scratch + kScW3;
    for (int it = t; it < ni * 32; it += kThreads) {
      const int k = it / 32, cp = it % 32;
      const float* P2 = s.r2(k);
      const float* wa = W3 + w3_row(2 * cp) * kW3Pitch;
      const float* wb = W3 + w3_row(2 * cp + 1) * kW3Pitch;
      float acc_a[9] = {}, acc_b[9] = {};
      FUSED_UNROLL(2)
      for (int ci = 0; ci < kC2; ++ci) {
        float in[25];
        FUSED_UNROLL_ALL
        for (int q = 0; q < 25; ++q) in[q] = P2[ci * kP2Plane + q];
        FUSED_UNROLL_ALL
        for (int tap = 0; tap < 9; ++tap) {
          const int ki = tap / 3, kj = tap % 3;
          const float w0 = wa[ci * 9 + tap], w1 = wb[ci * 9 + tap];
          FUSED_UNROLL_ALL
          for (int q = 0; q < 9; ++q) {
            acc_a[q] += w0 * in[(q / 3 + ki) * kP2 + q % 3 + kj];
            acc_b[q] += w1 * in[(q / 3 + ki) * kP2 + q % 3 + kj];
          }
        }
      }
      float* A3 = scratch + kScA3 + k * kFlat;
      const float ba = W3[kC3 * kW3Pitch + 2 * cp], bb = W3[kC3 * kW3Pitch + 2 * cp + 1];
      FUSED_UNROLL_ALL
      for (int q = 0; q < 9; ++q) {
        A3[2 * cp * kA3Plane + q] = relu(acc_a[q] + ba);
        A3[(2 * cp + 1) * kA3Plane + q] = relu(acc_b[q] + bb);
      }
    }
  });

  // dense1, split-K: thread = (slice of 72 inputs, output), every image at once, so each weight is loaded once per
  // block ([in][out] copy: a warp reads 128 contiguous bytes) and used ni times.
  blk.phase([&](int t) {
    const float* W4T = p.weights + kPkW4T;
    const float* A3 = scratch + kScA3;
    for (int it = t; it < kSplits * kF1; it += kThreads) {
      const int slice = it / kF1, o = it % kF1;
      float acc[kTile] = {};
      FUSED_UNROLL(4)
      for (int i = slice * kSliceLen; i < (slice + 1) * kSliceLen; ++i) {
        const float w = ldg(W4T + i * kF1 + o);
        FUSED_UNROLL_ALL
        for (int k = 0; k < kTile; ++k)
          if (k < ni) acc[k] += w * A3[k * kFlat + i];
      }
      FUSED_UNROLL_ALL
      for (int k = 0; k < kTile; ++k)
        if (k < ni) scratch[kScD1P + (slice * kTile + k) * kF1 + o] = acc[k];
    }
  });

  // dense1: sum the slices in a fixed order, bias, ReLU.
  blk.phase([&](int t) {
    for (int it = t; it < ni * kF1; it += kThreads) {
      const int k = it / kF1, o = it % kF1;
      float sum = 0.0f;
      FUSED_UNROLL_ALL
      for (int slice = 0; slice < kSplits; ++slice) sum += scratch[kScD1P + (slice * kTile + k) * kF1 + o];
      scratch[kScA4 + k * kF1 + o] = relu(sum + ldg(p.weights + kPkB4 + o));
    }
  });

  // dense2 -> logits.
  blk.phase([&](int t) {
    for (int it = t; it < ni * kK; it += kThreads) {
      const int k = it / kK, c = it % kK;
      const float* A4 = scratch + kScA4 + k * kF1;
      float z = 0.0f;
      for (int o = 0; o < kF1; ++o) z += ldg(p.weights + kPkW5 + c * kF1 + o) * A4[o];
      scratch[kScZ + k * 16 + c] = z + ldg(p.weights + kPkB5 + c);
    }
  });

  // Loss, goal and bookkeeping: one thread per image (the CPU twin's order of operations, in double where it is).
  blk.phase([&](int t) {
    if (t >= ni) return;
    const int e = live_entry[t];
    const float* tgt = p.target_dist + static_cast<size_t>(e) * kK;
    const TargetKind kind = static_cast<TargetKind>(ldg(p.target_kind + e));
    const int cls = ldg(p.target_class + e);
    // probs and dz in shared memory: the loss indexes them by class, which would put register arrays on the stack.
    float* probs = scratch + kScPR + t * 16;
    const float loss = loss_row(scratch + kScZ + t * 16, tgt, kind, cls, p.loss, p.kappa, probs,
                                scratch + kScDZ + t * 16);
    const bool met = goal_met(probs, tgt, kind, cls, p.stop_prob, p.stop_kl);
    const int steps = p.steps_done[e];
    if (p.start_class && steps == 0) {
      // The first iterate's class, for the report's "classified before" column: no second network pass for it.
      int best = 0;
      for (int j = 1; j < kK; ++j)
        if (probs[j] > probs[best]) best = j;
      p.start_class[e] = best;
    }
    const bool improved = !p.goal_reached[e] && (met || loss < p.best_loss[e]);
    if (improved) {
      p.best_loss[e] = loss;
      for (int j = 0; j < kK; ++j) p.best_probs[static_cast<size_t>(e) * kK + j] = probs[j];
      if (met) {
        p.goal_reached[e] = 1;
        p.success_step[e] = steps;
      }
    }
    const bool stop = met && p.early_stop;
    if (stop) s.misc[kMsLive + s.misc[kMsLiveSlot + t]] = 0;
    s.misc[kMsImproved + t] = improved ? 1 : 0;
    s.misc[kMsStop + t] = stop ? 1 : 0;
    s.misc[kMsStepT + t] = steps + 1;
  });

  // The best-image copy (the iterate just evaluated, still in x) and dense2's backward with ReLU.
  blk.phase([&](int t) {
    constexpr int kQ = kD / 4;
    for (int i = t; i < ni * kQ; i += kThreads) {
      const int k = i / kQ, q = i % kQ;
      if (!s.misc[kMsImproved + k]) continue;
      const size_t row = static_cast<size_t>(live_entry[k]) * kD;
      reinterpret_cast<float4*>(p.best_images + row)[q] = reinterpret_cast<const float4*>(p.x + row)[q];
    }
    if (!update) return;
    for (int it = t; it < ni * kF1; it += kThreads) {
      const int k = it / kF1, o = it % kF1;
      float d = 0.0f;
      FUSED_UNROLL_ALL
      for (int c = 0; c < kK; ++c) d += ldg(p.weights + kPkW5 + c * kF1 + o) * scratch[kScDZ + k * 16 + c];
      float& a4 = scratch[kScA4 + k * kF1 + o];
      a4 = a4 > 0.0f ? d : 0.0f;  // as cpu::relu_backward on the ReLU's output
    }
  });
  if (!update) return;

  // dense1 backward with conv3's ReLU: thread = flattened input i (coalesced [out][in] weights), every image at once.
  blk.phase([&](int t) {
    const float* W4 = p.weights + kPkW4;
    for (int i = t; i < kFlat; i += kThreads) {
      float acc[kTile] = {};
      FUSED_UNROLL(4)
      for (int o = 0; o < kF1; ++o) {
        const float w = ldg(W4 + o * kFlat + i);
        FUSED_UNROLL_ALL
        for (int k = 0; k < kTile; ++k)
          if (k < ni) acc[k] += w * scratch[kScA4 + k * kF1 + o];
      }
      FUSED_UNROLL_ALL
      for (int k = 0; k < kTile; ++k)
        if (k < ni) {
          float& a3 = scratch[kScA3 + k * kFlat + i];
          a3 = a3 > 0.0f ? acc[k] : 0.0f;
        }
    }
  });

  // conv3 backward: thread = (image, input channel), all 25 outputs; 81 FMAs per output channel with compile-time
  // taps. Lanes over channels read weights 9 floats apart (conflict-free). Writes dP2 over pool2 (its gradient mask
  // is in the codes, applied by conv2 backward).
  blk.phase([&](int t) {
    const float* W3 = scratch + kScW3;
    for (int it = t; it < ni * kC2; it += kThreads) {
      const int k = it / kC2, ci = it % kC2;
      const float* dA3 = scratch + kScA3 + k * kFlat;
      float acc[25] = {};
      FUSED_UNROLL(2)
      for (int co = 0; co < kC3; ++co) {
        float d[9], w[9];
        FUSED_UNROLL_ALL
        for (int q = 0; q < 9; ++q) {
          d[q] = dA3[co * kA3Plane + q];
          w[q] = W3[w3_row(co) * kW3Pitch + ci * 9 + q];
        }
        FUSED_UNROLL_ALL
        for (int q = 0; q < 9; ++q)
          FUSED_UNROLL_ALL
          for (int tap = 0; tap < 9; ++tap)
            acc[(q / 3 + tap / 3) * kP2 + q % 3 + tap % 3] += w[tap] * d[q];
      }
      float* dP2 = s.r2(k) + ci * kP2Plane;
      FUSED_UNROLL_ALL
      for (int q = 0; q < 25; ++q) dP2[q] = acc[q];
    }
  });

  // conv2 backward through pool2 and its ReLU, 4-class scheme (see class_fma). Thread = (8 input channels, image,
  // 4x2 tile of the 12x12 region that can receive gradient): 64 accumulators + 24 class gradients, 72 FMAs per 9
  // warp-uniform weight loads. Row and column 12 of dP1 are zero. Writes dP1 over R1.
  blk.phase([&](int t) {
    const int per_group = ni * 18;
    for (int it = t; it < 3 * per_group; it += kThreads) {
      const int g = it / per_group, k = (it % per_group) / 18, tile = it % 18;
      const int ti = tile / 6, tj = tile % 6;
      const float* dP2 = s.r2(k);
      const uint8_t* C2 = s.c2 + k * kP2Size;
      float acc[8][4][2] = {};
      FUSED_UNROLL(1)
      for (int co = 0; co < kC2; ++co) {
        float G[3][2][4];
        FUSED_UNROLL_ALL
        for (int pp = 0; pp < 3; ++pp)
          FUSED_UNROLL_ALL
          for (int q = 0; q < 2; ++q) {
            const int wy = 2 * ti - 1 + pp, wx = tj - 1 + q;
            float gv = 0.0f;
            unsigned code = 0;
            if (wy >= 0 && wy < kP2 && wx >= 0 && wx < kP2) {
              gv = dP2[co * kP2Plane + wy * kP2 + wx];
              code = C2[co * kP2Plane + wy * kP2 + wx];
            }
            class_gradients(gv, code, G[pp][q]);
          }
        FUSED_UNROLL_ALL
        for (int c = 0; c < 8; ++c) {
          float w[9];
          FUSED_UNROLL_ALL
          for (int tap = 0; tap < 9; ++tap) w[tap] = s.w()[kPkW2 + ((8 * g + c) * 9 + tap) * kC2 + co];
          class_fma(w, G, acc[c]);
        }
      }
      FUSED_UNROLL_ALL
      for (int c = 0; c < 8; ++c) {
        float* dP1 = s.r1(k) + (8 * g + c) * kP1Plane + 4 * ti * kP1 + 2 * tj;
        FUSED_UNROLL_ALL
        for (int dy = 0; dy < 4; ++dy)
          FUSED_UNROLL_ALL
          for (int dx = 0; dx < 2; ++dx) dP1[dy * kP1 + dx] = acc[c][dy][dx];
      }
    }
    // Row 12 and column 12 of dP1: conv2 outputs reach them only from row/column 10, which the floor pool drops.
    for (int it = t; it < ni * kC1 * 25; it += kThreads) {
      const int k = it / (kC1 * 25), c = (it / 25) % kC1, e = it % 25;
      const int pos = e < kP1 ? (kP1 - 1) * kP1 + e : (e - kP1) * kP1 + kP1 - 1;
      s.r1(k)[c * kP1Plane + pos] = 0.0f;
    }
  });

  // conv1 backward to the input through pool1 and its ReLU, the same 4-class scheme: thread = (image, 4x2 tile of
  // the 28x28 input), loop over the 24 channels with warp-uniform weights. Writes dx into R2 (dP2 is dead).
  blk.phase([&](int t) {
    for (int it = t; it < ni * 98; it += kThreads) {
      const int k = it / 98, tile = it % 98, ti = tile / 14, tj = tile % 14;
      const float* dP1 = s.r1(k);
      const unsigned long long* C1 = s.c1 + k * kC1Words;
      float acc[4][2] = {};
      FUSED_UNROLL(2)
      for (int c = 0; c < kC1; ++c) {
        float G[3][2][4];
        FUSED_UNROLL_ALL
        for (int pp = 0; pp < 3; ++pp)
          FUSED_UNROLL_ALL
          for (int q = 0; q < 2; ++q) {
            const int wy = 2 * ti - 1 + pp, wx = tj - 1 + q;
            float gv = 0.0f;
            unsigned code = 0;
            if (wy >= 0 && wy < kP1 && wx >= 0 && wx < kP1) {
              gv = dP1[c * kP1Plane + wy * kP1 + wx];
              code = static_cast<unsigned>(C1[c * kP1 + wy] >> (4 * wx)) & 15u;
            }
            class_gradients(gv, code, G[pp][q]);
          }
        float w[9];
        FUSED_UNROLL_ALL
        for (int tap = 0; tap < 9; ++tap) w[tap] = s.w()[kPkW1 + tap * kC1 + c];
        class_fma(w, G, acc);
      }
      float* dx = s.r2(k) + 4 * ti * kIn + 2 * tj;
      FUSED_UNROLL_ALL
      for (int dy = 0; dy < 4; ++dy)
        FUSED_UNROLL_ALL
        for (int dx2 = 0; dx2 < 2; ++dx2) dx[dy * kIn + dx2] = acc[dy][dx2];
    }
  });

  // The optimizer step (input_update_one): 64 lanes per image, pixels u, u+64, ...; coalesced. Without L2 this
  // finishes the pixel; with L2 the moved pixel waits in R2 (over its own gradient) for the norm.
  const bool l2 = p.norm == Norm::L2;
  blk.phase([&](int t) {
    for (int it = t; it < ni * 64; it += kThreads) {
      const int k = it / 64, u = it % 64;
      if (s.misc[kMsStop + k]) continue;
      const int e = live_entry[k];
      const int step = s.misc[kMsStepT + k];
      const size_t row = static_cast<size_t>(e) * kD;
      float* x = p.x + row;
      const float* x0 = p.x0 + row;
      const float eps = p.norm == Norm::None ? 0.0f : ldg(p.eps + e);
      float c1 = 1.0f, c2 = 1.0f;
      if (p.optimizer == InputOptimizer::Adam) {
        c1 = 1.0f - powf(p.beta1, static_cast<float>(step));
        c2 = 1.0f - powf(p.beta2, static_cast<float>(step));
      }
      float* xn = s.r2(k);
      double sq = 0;
      for (int i = u; i < kD; i += 64) {
        const float gi = xn[i];
        float xi = x[i];
        switch (p.optimizer) {
          case InputOptimizer::Adam: {
            const float mi = p.beta1 * p.m[row + i] + (1.0f - p.beta1) * gi;
            const float vi = p.beta2 * p.v[row + i] + (1.0f - p.beta2) * gi * gi;
            p.m[row + i] = mi;
            p.v[row + i] = vi;
            xi -= p.lr * (mi / c1) / (sqrtf(vi / c2) + p.adam_eps);
            break;
          }
          case InputOptimizer::Sgd: xi -= p.lr * gi; break;
          case InputOptimizer::Sign: xi -= p.lr * static_cast<float>((gi > 0) - (gi < 0)); break;
        }
        const float x0i = ldg(x0 + i);
        if (p.norm == Norm::Linf) xi = fminf(fmaxf(xi, x0i - eps), x0i + eps);
        if (l2) {
          const double d = static_cast<double>(xi - x0i);
          sq += d * d;
          xn[i] = xi;
        } else {
          x[i] = clamp01(xi);
        }
      }
      if (l2) reinterpret_cast<double*>(scratch + kScPS)[k * 64 + u] = sq;
      if (u == 0) p.steps_done[e] = step;
    }
  });
  if (!l2) return;

  // L2: every thread of an image sums the 64 partials in the same order, then scales and clamps its pixels.
  blk.phase([&](int t) {
    for (int it = t; it < ni * 64; it += kThreads) {
      const int k = it / 64, u = it % 64;
      if (s.misc[kMsStop + k]) continue;
      const int e = live_entry[k];
      const double* partial = reinterpret_cast<const double*>(scratch + kScPS) + k * 64;
      double total = 0;
      for (int j = 0; j < 64; ++j) total += partial[j];
      const double len = sqrt(total);
      const float eps = ldg(p.eps + e);
      const bool scale = len > eps;
      const float f = scale ? static_cast<float>(eps / len) : 1.0f;
      const size_t row = static_cast<size_t>(e) * kD;
      const float* xn = s.r2(k);
      for (int i = u; i < kD; i += 64) {
        float xi = xn[i];
        if (scale) {
          const float x0i = ldg(p.x0 + row + i);
          xi = x0i + (xi - x0i) * f;
        }
        p.x[row + i] = clamp01(xi);
      }
    }
  });
}

// ---- a block: stage conv1/conv2, then tiles, each for all the launch's steps -------------------------------------
#pragma nv_exec_check_disable
template <class Block>
FUSED_HD void fused_block(Block& blk, const FusedParams& p, const Smem& s, int block, int grid) {
  blk.phase([&](int t) {
    const float4* src = reinterpret_cast<const float4*>(p.weights);
    float4* dst = reinterpret_cast<float4*>(s.w());
    for (int i = t; i < kStageW12 / 4; i += kThreads) dst[i] = ldg(src + i);
  });
  const int tiles = (p.count + p.tile - 1) / p.tile;
  const int passes = p.steps + (p.final_eval ? 1 : 0);
  for (int tile = block; tile < tiles; tile += grid) {
    const int first = tile * p.tile;
    const int n_tile = imin(p.tile, p.count - first);
    blk.phase([&](int t) {
      if (t >= n_tile) return;
      s.misc[kMsEntry + t] = p.rows ? p.rows[first + t] : first + t;
      s.misc[kMsLive + t] = 1;
    });
    for (int pass = 0; pass < passes; ++pass) {
      blk.phase([&](int t) {
        if (t != 0) return;
        int n = 0;
        for (int slot = 0; slot < n_tile; ++slot)
          if (s.misc[kMsLive + slot]) {
            s.misc[kMsLiveSlot + n] = slot;
            s.misc[kMsLiveEntry + n] = s.misc[kMsEntry + slot];
            ++n;
          }
        s.misc[kMsNLive] = n;
      });
      // Read by every thread after the barrier; next written in the next pass, several barriers later.
      const int ni = s.misc[kMsNLive];
      if (ni == 0) break;
      run_step(blk, p, s, ni, pass < p.steps);
    }
    if (p.keep)
      blk.phase([&](int t) {
        if (t < n_tile) p.keep[first + t] = s.misc[kMsLive + t] ? 1 : 0;
      });
  }
}

struct DeviceBlock {
  template <class F>
  __device__ __forceinline__ void phase(F&& f) {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
};

struct HostBlock {
  bool reverse;
  template <class F>
  void phase(F&& f) {
    for (int i = 0; i < kThreads; ++i) f(reverse ? kThreads - 1 - i : i);
  }
};

__global__ void __launch_bounds__(kThreads, 1) fused_optimize_kernel(const FusedParams p) {
  extern __shared__ float4 fused_smem[];
  DeviceBlock blk;
  fused_block(blk, p, make_smem(reinterpret_cast<float*>(fused_smem)), static_cast<int>(blockIdx.x),
              static_cast<int>(gridDim.x));
}

// ---- weight packing ---------------------------------------------------------------------------------------------
// Packed element i from the PyTorch-layout tensors (Architecture::params() order).
FUSED_HD float packed_value(int i, const FusedWeightSources& src) {
  const float* const* t = src.tensor;
  if (i < kPkB1) return t[0][(i % kC1) * 9 + i / kC1];  // [tap][c] <- [c][1][3][3]
  if (i < kPkW2) return t[1][i - kPkB1];
  if (i < kPkB2) {
    const int j = i - kPkW2, ci = j / (9 * kC2), tap = (j / kC2) % 9, co = j % kC2;
    return t[2][(co * kC1 + ci) * 9 + tap];  // [ci][tap][co] <- [co][ci][3][3]
  }
  if (i < kPkW3) return t[3][i - kPkB2];
  if (i < kPkB3) {
    const int j = i - kPkW3, row = j / kW3Pitch, col = j % kW3Pitch;
    if (col == kW3Pitch - 1) return 0.0f;
    const int co = row < 32 ? 2 * row : 2 * (row - 32) + 1;
    return t[4][co * (kC2 * 9) + col];  // [row(co)][ci*9+tap] <- [co][ci][3][3]
  }
  if (i < kPkW4T) return t[5][i - kPkB3];
  if (i < kPkW4) {
    const int j = i - kPkW4T;
    return t[6][(j % kF1) * kFlat + j / kF1];  // [in][out] <- [out][in]
  }
  if (i < kPkB4) return t[6][i - kPkW4];
  if (i < kPkW5) return t[7][i - kPkB4];
  if (i < kPkB5) return t[8][i - kPkW5];
  if (i < kPkB5 + kK) return t[9][i - kPkB5];
  return 0.0f;
}

__global__ void fused_pack_kernel(const FusedWeightSources src, float* __restrict__ packed) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < kPkCount; i += gridDim.x * blockDim.x)
    packed[i] = packed_value(i, src);
}

void check_params(const char* op, const FusedParams& p) {
  if (p.count < 0 || p.steps < 0) throw_shape_error(op, "needs count >= 0 and steps >= 0");
  if (p.tile < 1 || p.tile > kFusedTileMax)
    throw_shape_error(op, "tile must be in 1.." + std::to_string(kFusedTileMax) + " (got " + std::to_string(p.tile) +
                              ")");
  if (!p.weights || !p.x || !p.x0 || !p.target_dist || !p.target_kind || !p.target_class || !p.steps_done ||
      !p.goal_reached || !p.best_loss || !p.best_probs || !p.best_images || !p.success_step)
    throw_shape_error(op, "weights, x, x0, targets and every bookkeeping array are required");
  if (p.optimizer == InputOptimizer::Adam && (!p.m || !p.v)) throw_shape_error(op, "Adam needs m and v");
  if (p.norm != Norm::None && !p.eps) throw_shape_error(op, "a norm ball needs eps");
}

}  // namespace

size_t fused_packed_weight_count() { return kPkCount; }
size_t fused_smem_bytes() { return kSmemBytes; }

void fused_pack_weights_cuda(const FusedWeightSources& src, float* packed, cudaStream_t stream) {
  for (const float* t : src.tensor)
    if (!t) throw_shape_error("fused_pack_weights_cuda", "all 10 parameter tensors are required");
  fused_pack_kernel<<<(kPkCount + 255) / 256, 256, 0, stream>>>(src, packed);
  check_launch("fused_pack_weights_cuda", stream);
}

void fused_pack_weights_host(const FusedWeightSources& src, float* packed) {
  for (const float* t : src.tensor)
    if (!t) throw_shape_error("fused_pack_weights_host", "all 10 parameter tensors are required");
  for (int i = 0; i < kPkCount; ++i) packed[i] = packed_value(i, src);
}

void fused_optimize_cuda(const FusedParams& p, int max_blocks, cudaStream_t stream) {
  check_params("fused_optimize_cuda", p);
  if (max_blocks < 1) throw_shape_error("fused_optimize_cuda", "needs max_blocks >= 1");
  if (p.count == 0 || (p.steps == 0 && !p.final_eval)) return;
  const int tiles = (p.count + p.tile - 1) / p.tile;
  // A per-function attribute, not state of ours; setting it on every launch costs a few microseconds at most.
  CUDA_CHECK(cudaFuncSetAttribute(fused_optimize_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(kSmemBytes)));
  fused_optimize_kernel<<<tiles < max_blocks ? tiles : max_blocks, kThreads, kSmemBytes, stream>>>(p);
  check_launch("fused_optimize_cuda", stream);
}

void fused_optimize_emulate(const FusedParams& p, int blocks, bool reverse_threads) {
  check_params("fused_optimize_emulate", p);
  if (blocks < 1) throw_shape_error("fused_optimize_emulate", "needs blocks >= 1");
  if (p.count == 0 || (p.steps == 0 && !p.final_eval)) return;
  std::vector<float4> smem(kSmemBytes / sizeof(float4));
  for (int b = 0; b < blocks; ++b) {
    float* base = reinterpret_cast<float*>(smem.data());
    for (int i = 0; i < kSmFloats; ++i) base[i] = NAN;
    HostBlock blk{reverse_threads};
    fused_block(blk, p, make_smem(base), b, blocks);
  }
}

}  // namespace nudge::cuda
