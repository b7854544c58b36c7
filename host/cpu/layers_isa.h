// The CPU layers' loops that the compiler cannot vectorise well at baseline x86-64, in AVX-512: the 2x2 stride-2
// max-pool forward and its backward fused with the ReLU before it, and col2im's adds for a plain (stride-1,
// unpadded) convolution. cpu_layers.cpp calls them where best_cpu_isa() is avx512 and runs its own loops elsewhere;
// the results are the same bits (the same comparisons, the same additions in the same order).
#pragma once
#include <cstdint>

namespace nudge::cpu {

#if NUDGE_X86_KERNELS
// x [H, W] -> y, argmax [H/2, W/2] (floors), argmax the index h*W + w in the plane. Comparisons in row-major window
// order, strictly greater: the first maximum wins and NaN never does.
void maxpool2_plane_avx512(const float* x, int H, int W, float* y, int32_t* argmax);
// dx [H, W] = 0 except at each window's argmax, where it is 0 + dy if relu_out there is > 0.
void maxpool2_relu_backward_plane_avx512(const float* dy, const int32_t* argmax, const float* relu_out, int H, int W,
                                         float* dx);
// dx[c, h, w] = the sum, onto 0 and in (ki, kj) order, of col[(c*k + ki)*k + kj][(h-ki)*Wo + (w-kj)] over the
// windows that cover (h, w); col's rows ld floats apart. Every element of dx is written.
void col2im_plain_avx512(const float* col, int ld, int C, int H, int W, int k, float* dx);
#endif

}  // namespace nudge::cpu
