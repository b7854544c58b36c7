// The fused kernel's compile-time layout (kernels/fused/fused_optimize.cu): the reference architecture's shapes,
// the packed weight buffer (its offsets and packed_value, which fills them, side by side), shared memory (regions,
// the block scratch that reuses R1, the misc-int slots, the Smem view), the pool codes, and the thread mapping of
// every phase. Budgets and floors: docs/fused-kernel.md.
#pragma once
#include <cstddef>
#include <cstdint>

#include "block.cuh"
#include "fused_optimize.cuh"

namespace nudge::cuda::fused {

// ---- shapes (the reference architecture, fixed at compile time) ----------------------------------------------------
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
constexpr int kPkW3 = kPkB2 + kC2;                 // 8052: conv3 [row][325], row = w3_row(co)
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

// conv3's rows interleave the even and the odd output channels: conv3 forward's lane cp owns channels 2cp and 2cp+1
// and so reads rows cp and 32 + cp, consecutive lanes kW3Pitch (odd) floats apart.
constexpr int kW3Half = kC3 / 2;
FUSED_HD int w3_row(int co) { return (co & 1) * kW3Half + (co >> 1); }
FUSED_HD int w3_channel(int row) { return row < kW3Half ? 2 * row : 2 * (row - kW3Half) + 1; }  // w3_row's inverse

// Packed element i from the PyTorch-layout tensors (Architecture::params() order): the inverse of the offsets above.
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
    return t[4][w3_channel(row) * (kC2 * 9) + col];  // [w3_row(co)][ci*9+tap] <- [co][ci][3][3]
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

// ---- shared memory (floats from the base). Per-image regions are indexed by live slot k < ni. ---------------------
constexpr int kSmW = 0;                            // staged conv1/conv2 weights, same layout as packed [0, kPkW3)
constexpr int kSmR1 = kSmW + kStageW12;            // 8 x 4056: pool1 -> (block scratch) -> dP1
constexpr int kSmR2 = kSmR1 + kTile * kP1Size;     // 8 x 900: x -> pool2 -> dP2 -> dx -> new x (L2)
constexpr int kR2Stride = 900;
constexpr int kC1Words = kC1 * kP1;                // 312 64-bit words: 13 nibbles (one pooled row) each
constexpr int kSmC1 = kSmR2 + kTile * kR2Stride;   // 8 x 312 uint64
constexpr int kSmC2 = kSmC1 + kTile * kC1Words * 2;  // 8 x 900 bytes
constexpr int kMiscInts = 64;                      // room for 8 tables of kTile ints (kMs*)
constexpr int kSmMisc = kSmC2 + kTile * kP2Size / 4;  // kMiscInts ints
constexpr int kSmFloats = kSmMisc + kMiscInts;
constexpr size_t kSmemBytes = sizeof(float) * kSmFloats;
static_assert(kSmemBytes <= 227 * 1024, "over the 227 KB an sm_90 block may use");
static_assert(kSmR1 % 4 == 0 && kSmR2 % 4 == 0 && kR2Stride % 4 == 0 && kSmC1 % 2 == 0, "alignment of regions");
static_assert(kD <= kR2Stride && kP2Size <= kR2Stride, "R2 holds x, pool2 and dx");

// Block scratch inside R1 while pool1 is dead (after conv2 forward, before conv2 backward).
constexpr int kScW3 = 0;                           // staged conv3 weights + bias
constexpr int kScA3 = kScW3 + kStageW3;            // 8 x 576 conv3 output -> dA3
constexpr int kSplits = 8;                         // K-slices of dense1 forward: 8 x 64 outputs = 512 items
constexpr int kSliceLen = kFlat / kSplits;         // 72
constexpr int kScD1P = kScA3 + kTile * kFlat;      // [8 slices][8 images][64] partial sums
constexpr int kScA4 = kScD1P + kSplits * kTile * kF1;  // 8 x 64 dense1 output -> dA4
constexpr int kLogitPitch = 16;                    // kK rounded up: floats per image of logits, dz, probabilities
constexpr int kScZ = kScA4 + kTile * kF1;          // 8 x 16 logits
constexpr int kScDZ = kScZ + kTile * kLogitPitch;  // 8 x 16 logit gradients
constexpr int kScPR = kScDZ + kTile * kLogitPitch; // 8 x 16 probabilities
constexpr int kScEnd = kScPR + kTile * kLogitPitch;
constexpr int kScPS = 0;                           // 8 x 64 doubles: L2 partial sums during the update
static_assert(kScEnd <= kTile * kP1Size, "block scratch must fit in R1");
static_assert(kScA3 % 4 == 0, "scratch alignment");
static_assert(kSplits * kSliceLen == kFlat, "dense1 forward: whole slices");
static_assert(kK <= kLogitPitch, "a logit row holds the classes");

// Misc ints: per-slot tables of kTile entries each.
constexpr int kMsEntry = 0;       // [8] entry of each tile slot
constexpr int kMsLive = 8;        // [8] slot still active
constexpr int kMsLiveSlot = 16;   // [8] tile slot of live image k
constexpr int kMsLiveEntry = 24;  // [8] entry of live image k
constexpr int kMsNLive = 32;
constexpr int kMsImproved = 40;   // [8] by live image: this iterate became the best one
constexpr int kMsStop = 48;       // [8] by live image: met its goal under early stopping (no update)
constexpr int kMsStepT = 56;      // [8] by live image: the update's 1-based step count
static_assert(kMsLive >= kMsEntry + kTile && kMsLiveSlot >= kMsLive + kTile && kMsLiveEntry >= kMsLiveSlot + kTile &&
                  kMsNLive >= kMsLiveEntry + kTile && kMsImproved > kMsNLive && kMsStop >= kMsImproved + kTile &&
                  kMsStepT >= kMsStop + kTile && kMsStepT + kTile <= kMiscInts,
              "misc slots overlap");

struct Smem {
  float* f;                   // base
  unsigned long long* c1;     // pool1 codes
  uint8_t* c2;                // pool2 codes
  int* misc;
  FUSED_HD float* w() const { return f + kSmW; }
  FUSED_HD float* r1(int k) const { return f + kSmR1 + k * kP1Size; }
  FUSED_HD float* r2(int k) const { return f + kSmR2 + k * kR2Stride; }
  FUSED_HD float* scratch() const { return f + kSmR1; }
  FUSED_HD const int* live_entry() const { return misc + kMsLiveEntry; }
};

FUSED_HD Smem make_smem(float* base) {
  Smem s;
  s.f = base;
  s.c1 = reinterpret_cast<unsigned long long*>(base + kSmC1);
  s.c2 = reinterpret_cast<uint8_t*>(base + kSmC2);
  s.misc = reinterpret_cast<int*>(base + kSmMisc);
  return s;
}

// ---- pool codes: argmax (0..3, row-major in the 2x2 window) | kCodePositive if the pooled value is positive -------
constexpr unsigned kCodeArgmax = 3u;
constexpr unsigned kCodePositive = 4u;  // the ReLU before the pool passes gradient to the argmax
constexpr int kC1CodeBits = 4;          // pool1 codes: one nibble per cell, a pooled row per 64-bit word
static_assert(kP1 * kC1CodeBits <= 64, "a pooled row of pool1 codes fits one word");

// ---- thread mapping: what one thread (item) of each phase owns ------------------------------------------------------
// Thread t of a phase takes items t, t + kThreads, ...; a phase with at most kThreads items runs in one pass.
constexpr int kXQuads = kD / 4;  // load x, best-image copy: an item is one float4 (16-byte loads), 196 per image

// conv1 forward: item = (group of kConv1Ch channels, image, pooled row), all 13 windows of the row.
constexpr int kConv1Ch = 6;                    // 24 accumulators; the 6 weights of a tap are 3 float2 loads
constexpr int kConv1Groups = kC1 / kConv1Ch;   // 4: 4 x 8 images x 13 rows = 416 items, one pass
// conv2 forward: item = (group of kConv2Ch output channels, image, pool window).
constexpr int kConv2Ch = 18;                   // 18 channels x 4 window outputs = 72 accumulators, 9 float2 per tap
constexpr int kConv2Groups = kC2 / kConv2Ch;   // 2: 2 x 8 x 25 = 400 items, one pass
// conv3 forward: item = (image, output channels 2cp and 2cp+1): kConv3Pairs lanes, a warp per image.
constexpr int kConv3Pairs = kC3 / 2;           // 32 = a warp: its 25 input loads per channel are broadcasts
// conv3 backward: item = (image, input channel), kC2 per image.

// conv2 and conv1 backward (the 4-class scheme, backward.cuh): a thread owns a kBwdTileH x kBwdTileW tile of the
// convolution's input gradient; kBwdWinRows x kBwdWinCols pool windows can reach it, kPoolClasses argmax classes
// each.
// 4x2: 8 outputs x 9 taps = 72 FMAs per 9 weight loads, sharing the 24 class gradients of the 3 x 2 windows; even
// sides at even origins, so 3 x 2 windows reach every tile.
constexpr int kBwdTileH = 4, kBwdTileW = 2;
constexpr int kBwdWinRows = kBwdTileH / 2 + 1, kBwdWinCols = kBwdTileW / 2 + 1;  // 3 x 2
constexpr int kPoolClasses = 4;  // argmax positions of a 2x2 window
// conv2 backward: item = (group of kConv2BwdCh input channels, image, tile of the region of dP1 that conv2's kept
// 10x10 outputs reach).
constexpr int kConv2BwdCh = 8;                        // 64 accumulators + 24 class gradients
constexpr int kConv2BwdGroups = kC1 / kConv2BwdCh;    // 3
constexpr int kDP1Reach = 2 * kP2 + 2;                // 12: rows/cols 0..11 of dP1
constexpr int kConv2BwdTilesX = kDP1Reach / kBwdTileW;                         // 6
constexpr int kConv2BwdTiles = (kDP1Reach / kBwdTileH) * kConv2BwdTilesX;     // 18: 3 x 18 x 8 = 432 items, one pass
constexpr int kDP1Edge = 2 * kP1 - 1;                 // 25 cells: row and column 12 of a dP1 plane, zero
// conv1 backward: item = (image, tile of the 28x28 input).
constexpr int kConv1BwdTilesX = kIn / kBwdTileW;                               // 14
constexpr int kConv1BwdTiles = (kIn / kBwdTileH) * kConv1BwdTilesX;           // 98: 784 items for 8 images, 2 passes
// The optimizer step: item = (image, lane u) over the pixels u, u+64, ...; a multiple of the warp size, so a warp
// is one image and its loads of x, m, v, x0 are 128 contiguous bytes. The L2 norm then sums 64 partials (kScPS).
constexpr int kUpdateLanes = 64;

static_assert(kConv1Groups * kConv1Ch == kC1 && kConv1Ch % 2 == 0, "conv1: whole groups, float2 weights");
static_assert(kConv2Groups * kConv2Ch == kC2 && kConv2Ch % 2 == 0, "conv2: whole groups, float2 weights");
static_assert(kConv2BwdGroups * kConv2BwdCh == kC1, "conv2 backward: whole groups");
static_assert(kDP1Reach % kBwdTileH == 0 && kDP1Reach % kBwdTileW == 0 && kDP1Reach + 1 == kP1,
              "conv2 backward: whole tiles, one edge row and column left to zero");
static_assert(kIn % kBwdTileH == 0 && kIn % kBwdTileW == 0, "conv1 backward: whole tiles");
static_assert(kConv1Groups * kTile * kP1 <= kThreads && kConv2Groups * kTile * kP2Plane <= kThreads &&
                  kConv2BwdGroups * kTile * kConv2BwdTiles <= kThreads,
              "the register-heavy phases take one pass");
static_assert(kTile * kUpdateLanes * 2 <= kTile * kP1Size, "L2 partial sums (doubles) fit in R1");

}  // namespace nudge::cuda::fused
