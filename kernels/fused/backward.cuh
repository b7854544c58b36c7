// The fused kernel's backward pass to the input, no weight gradients (kernels/fused/fused_optimize.cu): one function
// per phase, each called by every thread t of the block inside blk.phase, for the ni live images of the tile. In:
// the logit gradients dz (loss_goal.cuh) and the forward pass's activations and pool codes; out: dx in R2.
#pragma once
#include "layout.cuh"

namespace nudge::cuda::fused {

// ---- the 4-class backward through ReLU + 2x2 max-pool + 3x3 valid convolution ------------------------------------
// A thread owns a kBwdTileH x kBwdTileW = 4x2 tile of the convolution's input gradient, rows 4*ti+dy, cols 2*tj+dx.
// The pool windows that can reach it are rows 2*ti-1+p (p = 0..2) and cols tj-1+q (q = 0..1). A window with
// gradient g, argmax (a,b) and a positive value adds g * w[ki][kj] at ki = dy + 2 - 2p - a, kj = dx + 2 - 2q - b
// (when both are in 0..2). Spreading each window's g into four "class" values G[p][q][2a+b] (g for its own argmax, 0
// for the others) makes every tap a compile-time constant: 9 FMAs per output, no branch on data.
FUSED_HD void class_gradients(float g, unsigned code, float G[kPoolClasses]) {
  if (!(code & kCodePositive)) g = 0.0f;
  FUSED_UNROLL_ALL
  for (int c = 0; c < kPoolClasses; ++c) G[c] = (code & kCodeArgmax) == static_cast<unsigned>(c) ? g : 0.0f;
}

FUSED_HD void class_fma(const float w[9], const float G[kBwdWinRows][kBwdWinCols][kPoolClasses],
                        float acc[kBwdTileH][kBwdTileW]) {
  FUSED_UNROLL_ALL
  for (int dy = 0; dy < kBwdTileH; ++dy)
    FUSED_UNROLL_ALL
    for (int dx = 0; dx < kBwdTileW; ++dx)
      FUSED_UNROLL_ALL
      for (int p = 0; p < kBwdWinRows; ++p)
        FUSED_UNROLL_ALL
        for (int q = 0; q < kBwdWinCols; ++q)
          FUSED_UNROLL_ALL
          for (int a = 0; a < 2; ++a)
            FUSED_UNROLL_ALL
            for (int b = 0; b < 2; ++b) {
              const int ki = dy + 2 - 2 * p - a, kj = dx + 2 - 2 * q - b;
              if (ki >= 0 && ki <= 2 && kj >= 0 && kj <= 2) acc[dy][dx] += w[ki * 3 + kj] * G[p][q][a * 2 + b];
            }
}

// The best-image copy: the iterate just evaluated, still in x, for the images whose iterate became the best one.
FUSED_HD void copy_best_image(int t, const FusedParams& p, const Smem& s, int ni) {
  for (int i = t; i < ni * kXQuads; i += kThreads) {
    const int k = i / kXQuads, q = i % kXQuads;
    if (!s.misc[kMsImproved + k]) continue;
    const size_t row = static_cast<size_t>(s.live_entry()[k]) * kD;
    reinterpret_cast<float4*>(p.best_images + row)[q] = reinterpret_cast<const float4*>(p.x + row)[q];
  }
}

// dense2 backward with dense1's ReLU: thread = (image, dense1 output). Writes dA4 over A4.
FUSED_HD void dense2_backward(int t, const FusedParams& p, const Smem& s, int ni) {
  float* scratch = s.scratch();
  for (int it = t; it < ni * kF1; it += kThreads) {
    const int k = it / kF1, o = it % kF1;
    float d = 0.0f;
    FUSED_UNROLL_ALL
    for (int c = 0; c < kK; ++c) d += ldg(p.weights + kPkW5 + c * kF1 + o) * scratch[kScDZ + k * kLogitPitch + c];
    float& a4 = scratch[kScA4 + k * kF1 + o];
    a4 = a4 > 0.0f ? d : 0.0f;  // as cpu::relu_backward on the ReLU's output
  }
}

// dense1 backward with conv3's ReLU: thread = flattened input i (coalesced [out][in] weights), every image at once.
// Writes dA3 over A3.
FUSED_HD void dense1_backward(int t, const FusedParams& p, const Smem& s, int ni) {
  float* scratch = s.scratch();
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
}

// conv3 backward: thread = (image, input channel), all 25 outputs; 81 FMAs per output channel with compile-time
// taps. Lanes over channels read weights 9 floats apart (conflict-free). Writes dP2 over pool2 (its gradient mask
// is in the codes, applied by conv2 backward).
FUSED_HD void conv3_backward(int t, const Smem& s, int ni) {
  float* scratch = s.scratch();
  const float* W3 = scratch + kScW3;
  for (int it = t; it < ni * kC2; it += kThreads) {
    const int k = it / kC2, ci = it % kC2;
    const float* dA3 = scratch + kScA3 + k * kFlat;
    float acc[kP2Plane] = {};
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
    for (int q = 0; q < kP2Plane; ++q) dP2[q] = acc[q];
  }
}

// conv2 backward through pool2 and its ReLU, 4-class scheme (see class_fma). Thread = (kConv2BwdCh input channels,
// image, 4x2 tile of the 12x12 region that can receive gradient): 64 accumulators + 24 class gradients, 72 FMAs per
// 9 warp-uniform weight loads. Writes dP1 over R1; row and column 12 are zero_dp1_edge's.
FUSED_HD void conv2_backward(int t, const Smem& s, int ni) {
  const int per_group = ni * kConv2BwdTiles;
  for (int it = t; it < kConv2BwdGroups * per_group; it += kThreads) {
    const int g = it / per_group, k = (it % per_group) / kConv2BwdTiles, tile = it % kConv2BwdTiles;
    const int ti = tile / kConv2BwdTilesX, tj = tile % kConv2BwdTilesX;
    const float* dP2 = s.r2(k);
    const uint8_t* C2 = s.c2 + k * kP2Size;
    float acc[kConv2BwdCh][kBwdTileH][kBwdTileW] = {};
    FUSED_UNROLL(1)
    for (int co = 0; co < kC2; ++co) {
      float G[kBwdWinRows][kBwdWinCols][kPoolClasses];
      FUSED_UNROLL_ALL
      for (int pp = 0; pp < kBwdWinRows; ++pp)
        FUSED_UNROLL_ALL
        for (int q = 0; q < kBwdWinCols; ++q) {
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
      for (int c = 0; c < kConv2BwdCh; ++c) {
        float w[9];
        FUSED_UNROLL_ALL
        for (int tap = 0; tap < 9; ++tap) w[tap] = s.w()[kPkW2 + ((kConv2BwdCh * g + c) * 9 + tap) * kC2 + co];
        class_fma(w, G, acc[c]);
      }
    }
    FUSED_UNROLL_ALL
    for (int c = 0; c < kConv2BwdCh; ++c) {
      float* dP1 = s.r1(k) + (kConv2BwdCh * g + c) * kP1Plane + kBwdTileH * ti * kP1 + kBwdTileW * tj;
      FUSED_UNROLL_ALL
      for (int dy = 0; dy < kBwdTileH; ++dy)
        FUSED_UNROLL_ALL
        for (int dx = 0; dx < kBwdTileW; ++dx) dP1[dy * kP1 + dx] = acc[c][dy][dx];
    }
  }
}

// Row 12 and column 12 of dP1: conv2 outputs reach them only from row/column 10, which the floor pool drops.
// Thread = (image, channel, edge cell); the same phase as conv2_backward, which writes the rest of each plane.
FUSED_HD void zero_dp1_edge(int t, const Smem& s, int ni) {
  for (int it = t; it < ni * kC1 * kDP1Edge; it += kThreads) {
    const int k = it / (kC1 * kDP1Edge), c = (it / kDP1Edge) % kC1, e = it % kDP1Edge;
    const int pos = e < kP1 ? (kP1 - 1) * kP1 + e : (e - kP1) * kP1 + kP1 - 1;
    s.r1(k)[c * kP1Plane + pos] = 0.0f;
  }
}

// conv1 backward to the input through pool1 and its ReLU, the same 4-class scheme: thread = (image, 4x2 tile of
// the 28x28 input), loop over the 24 channels with warp-uniform weights. Writes dx into R2 (dP2 is dead).
FUSED_HD void conv1_backward(int t, const Smem& s, int ni) {
  for (int it = t; it < ni * kConv1BwdTiles; it += kThreads) {
    const int k = it / kConv1BwdTiles, tile = it % kConv1BwdTiles;
    const int ti = tile / kConv1BwdTilesX, tj = tile % kConv1BwdTilesX;
    const float* dP1 = s.r1(k);
    const unsigned long long* C1 = s.c1 + k * kC1Words;
    float acc[kBwdTileH][kBwdTileW] = {};
    FUSED_UNROLL(2)
    for (int c = 0; c < kC1; ++c) {
      float G[kBwdWinRows][kBwdWinCols][kPoolClasses];
      FUSED_UNROLL_ALL
      for (int pp = 0; pp < kBwdWinRows; ++pp)
        FUSED_UNROLL_ALL
        for (int q = 0; q < kBwdWinCols; ++q) {
          const int wy = 2 * ti - 1 + pp, wx = tj - 1 + q;
          float gv = 0.0f;
          unsigned code = 0;
          if (wy >= 0 && wy < kP1 && wx >= 0 && wx < kP1) {
            gv = dP1[c * kP1Plane + wy * kP1 + wx];
            code = static_cast<unsigned>(C1[c * kP1 + wy] >> (kC1CodeBits * wx)) & ((1u << kC1CodeBits) - 1u);
          }
          class_gradients(gv, code, G[pp][q]);
        }
      float w[9];
      FUSED_UNROLL_ALL
      for (int tap = 0; tap < 9; ++tap) w[tap] = s.w()[kPkW1 + tap * kC1 + c];
      class_fma(w, G, acc);
    }
    float* dx = s.r2(k) + kBwdTileH * ti * kIn + kBwdTileW * tj;
    FUSED_UNROLL_ALL
    for (int dy = 0; dy < kBwdTileH; ++dy)
      FUSED_UNROLL_ALL
      for (int dx2 = 0; dx2 < kBwdTileW; ++dx2) dx[dy * kIn + dx2] = acc[dy][dx2];
  }
}

}  // namespace nudge::cuda::fused
