// The fused kernel's forward pass (kernels/fused/fused_optimize.cu): one function per phase, each called by every
// thread t of the block inside blk.phase, for the ni live images of the tile. Input x in R2; out: pool1 in R1 and its
// codes, pool2 in R2 and its codes, then (R1 as block scratch) conv3's output, dense1's and the logits.
#pragma once
#include "layout.cuh"

namespace nudge::cuda::fused {

// Bias, ReLU and 2x2 max-pool of one window's four conv outputs in row-major order, as cpu::relu_forward then
// cpu::maxpool_forward: a later element wins only if strictly greater. code = argmax (0..3) | kCodePositive if the
// pooled value is positive (the ReLU then passes gradient to it).
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
  *code = static_cast<unsigned>(best) | (bv > 0.0f ? kCodePositive : 0u);
}

// Load x into R2. Plain loads: this kernel writes x, so the read-only path is not allowed.
FUSED_HD void load_x(int t, const FusedParams& p, const Smem& s, int ni) {
  for (int i = t; i < ni * kXQuads; i += kThreads) {
    const int k = i / kXQuads, q = i % kXQuads;
    const float4* src = reinterpret_cast<const float4*>(p.x + static_cast<size_t>(s.live_entry()[k]) * kD);
    reinterpret_cast<float4*>(s.r2(k))[q] = src[q];
  }
}

static_assert(kConv1Ch == 6, "conv1_pool1 loads a tap's weights as three float2");

// conv1 + bias + ReLU + pool1. Thread = (kConv1Ch channels, image, pooled row), all 13 windows of the row; lanes run
// over rows and images so the weight loads are warp-uniform broadcasts. Owns its rows of pool1 codes (one word each).
FUSED_HD void conv1_pool1(int t, const Smem& s, int ni) {
  const int per_group = ni * kP1;
  for (int it = t; it < kConv1Groups * per_group; it += kThreads) {
    const int g = it / per_group, k = (it % per_group) / kP1, py = it % kP1;
    const float* X = s.r2(k) + 2 * py * kIn;
    const float* W = s.w() + kPkW1 + kConv1Ch * g;
    float* P1 = s.r1(k) + kConv1Ch * g * kP1Plane + py * kP1;
    unsigned long long words[kConv1Ch] = {0, 0, 0, 0, 0, 0};
    FUSED_UNROLL(1)
    for (int px = 0; px < kP1; ++px) {
      float in[4][4];
      FUSED_UNROLL_ALL
      for (int a = 0; a < 4; ++a)
        FUSED_UNROLL_ALL
        for (int b = 0; b < 4; ++b) in[a][b] = X[a * kIn + 2 * px + b];
      float acc[kConv1Ch][4] = {};
      FUSED_UNROLL_ALL
      for (int tap = 0; tap < 9; ++tap) {
        const int ki = tap / 3, kj = tap % 3;
        const float2* wp = reinterpret_cast<const float2*>(W + tap * kC1);
        const float2 w01 = wp[0], w23 = wp[1], w45 = wp[2];
        const float w[kConv1Ch] = {w01.x, w01.y, w23.x, w23.y, w45.x, w45.y};
        FUSED_UNROLL_ALL
        for (int c = 0; c < kConv1Ch; ++c)
          FUSED_UNROLL_ALL
          for (int d = 0; d < 4; ++d) acc[c][d] += w[c] * in[d / 2 + ki][d % 2 + kj];
      }
      FUSED_UNROLL_ALL
      for (int c = 0; c < kConv1Ch; ++c) {
        float value;
        unsigned code;
        relu_pool4(acc[c], s.w()[kPkB1 + kConv1Ch * g + c], &value, &code);
        P1[c * kP1Plane + px] = value;
        words[c] |= static_cast<unsigned long long>(code) << (kC1CodeBits * px);
      }
    }
    FUSED_UNROLL_ALL
    for (int c = 0; c < kConv1Ch; ++c) s.c1[k * kC1Words + (kConv1Ch * g + c) * kP1 + py] = words[c];
  }
}

// conv2 + bias + ReLU + pool2 on the 10x10 outputs the floor pool keeps. Thread = (kConv2Ch output channels, image,
// window): 72 accumulators; per input channel 16 inputs and 81 warp-uniform float2 weight loads for 648 FMAs.
FUSED_HD void conv2_pool2(int t, const Smem& s, int ni) {
  const int per_group = ni * kP2Plane;
  for (int it = t; it < kConv2Groups * per_group; it += kThreads) {
    const int g = it / per_group, k = (it % per_group) / kP2Plane, win = it % kP2Plane;
    const int wy = win / kP2, wx = win % kP2;
    const float* P1 = s.r1(k) + 2 * wy * kP1 + 2 * wx;
    const float* W = s.w() + kPkW2 + kConv2Ch * g;
    float acc[kConv2Ch][4] = {};
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
        for (int r = 0; r < kConv2Ch / 2; ++r) {
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
    for (int r = 0; r < kConv2Ch; ++r) {
      const int co = kConv2Ch * g + r;
      float value;
      unsigned code;
      relu_pool4(acc[r], s.w()[kPkB2 + co], &value, &code);
      P2[co * kP2Plane + win] = value;
      C2[co * kP2Plane + win] = static_cast<uint8_t>(code);
    }
  }
}

// Stage conv3 into R1 (pool1 is dead now: its gradient mask lives in the codes).
FUSED_HD void stage_conv3(int t, const FusedParams& p, const Smem& s) {
  const float4* src = reinterpret_cast<const float4*>(p.weights + kPkW3);
  float4* dst = reinterpret_cast<float4*>(s.scratch() + kScW3);
  for (int i = t; i < kStageW3 / 4; i += kThreads) dst[i] = ldg(src + i);
}

// conv3 + bias + ReLU. Thread = (image, output channels 2cp and 2cp+1), all 9 positions; a warp is one image, so
// the 25 input loads per channel are broadcasts, and lanes read weight rows kW3Pitch floats apart (conflict-free).
FUSED_HD void conv3_forward(int t, const Smem& s, int ni) {
  float* scratch = s.scratch();
  const float* W3 = scratch + kScW3;
  for (int it = t; it < ni * kConv3Pairs; it += kThreads) {
    const int k = it / kConv3Pairs, cp = it % kConv3Pairs;
    const float* P2 = s.r2(k);
    const float* wa = W3 + w3_row(2 * cp) * kW3Pitch;
    const float* wb = W3 + w3_row(2 * cp + 1) * kW3Pitch;
    float acc_a[kA3Plane] = {}, acc_b[kA3Plane] = {};
    FUSED_UNROLL(2)
    for (int ci = 0; ci < kC2; ++ci) {
      float in[kP2Plane];
      FUSED_UNROLL_ALL
      for (int q = 0; q < kP2Plane; ++q) in[q] = P2[ci * kP2Plane + q];
      FUSED_UNROLL_ALL
      for (int tap = 0; tap < 9; ++tap) {
        const int ki = tap / 3, kj = tap % 3;
        const float w0 = wa[ci * 9 + tap], w1 = wb[ci * 9 + tap];
        FUSED_UNROLL_ALL
        for (int q = 0; q < kA3Plane; ++q) {
          acc_a[q] += w0 * in[(q / 3 + ki) * kP2 + q % 3 + kj];
          acc_b[q] += w1 * in[(q / 3 + ki) * kP2 + q % 3 + kj];
        }
      }
    }
    float* A3 = scratch + kScA3 + k * kFlat;
    const float ba = W3[kC3 * kW3Pitch + 2 * cp], bb = W3[kC3 * kW3Pitch + 2 * cp + 1];
    FUSED_UNROLL_ALL
    for (int q = 0; q < kA3Plane; ++q) {
      A3[2 * cp * kA3Plane + q] = relu(acc_a[q] + ba);
      A3[(2 * cp + 1) * kA3Plane + q] = relu(acc_b[q] + bb);
    }
  }
}

// dense1, split-K: thread = (slice of kSliceLen inputs, output), every image at once, so each weight is loaded once
// per block ([in][out] copy: a warp reads 128 contiguous bytes) and used ni times.
FUSED_HD void dense1_partial(int t, const FusedParams& p, const Smem& s, int ni) {
  float* scratch = s.scratch();
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
}

// dense1: sum the slices in a fixed order, bias, ReLU. Thread = (image, output).
FUSED_HD void dense1_reduce(int t, const FusedParams& p, const Smem& s, int ni) {
  float* scratch = s.scratch();
  for (int it = t; it < ni * kF1; it += kThreads) {
    const int k = it / kF1, o = it % kF1;
    float sum = 0.0f;
    FUSED_UNROLL_ALL
    for (int slice = 0; slice < kSplits; ++slice) sum += scratch[kScD1P + (slice * kTile + k) * kF1 + o];
    scratch[kScA4 + k * kF1 + o] = relu(sum + ldg(p.weights + kPkB4 + o));
  }
}

// dense2 -> logits. Thread = (image, class).
FUSED_HD void dense2_forward(int t, const FusedParams& p, const Smem& s, int ni) {
  float* scratch = s.scratch();
  for (int it = t; it < ni * kK; it += kThreads) {
    const int k = it / kK, c = it % kK;
    const float* A4 = scratch + kScA4 + k * kF1;
    float z = 0.0f;
    for (int o = 0; o < kF1; ++o) z += ldg(p.weights + kPkW5 + c * kF1 + o) * A4[o];
    scratch[kScZ + k * kLogitPitch + c] = z + ldg(p.weights + kPkB5 + c);
  }
}

}  // namespace nudge::cuda::fused
