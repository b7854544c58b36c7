// NUDGE_HD marks a function that nvcc compiles for both host and device and a plain compiler as inline, so that one
// source of a piece of maths serves the CPU backend, the CUDA kernels and the CPU tests of the device's arithmetic.
#pragma once

#if defined(__CUDACC__)
#define NUDGE_HD __host__ __device__ __forceinline__
#else
#define NUDGE_HD inline
#endif

// Minimum and maximum of floats with std::min/std::max's semantics on the host (a NaN first argument is returned,
// inlined without a libm call) and fminf/fmaxf on the device (one instruction). They agree for every non-NaN input.
#if defined(__CUDA_ARCH__)
NUDGE_HD float nudge_fminf(float a, float b) { return fminf(a, b); }
NUDGE_HD float nudge_fmaxf(float a, float b) { return fmaxf(a, b); }
#else
NUDGE_HD float nudge_fminf(float a, float b) { return b < a ? b : a; }
NUDGE_HD float nudge_fmaxf(float a, float b) { return a < b ? b : a; }
#endif

// A double product and sum that nvcc never contracts into an FMA (the intrinsics round each operation), so that row
// code which must give the host's bits on the card (square_l2_rows.h) rounds where the host does. On the host, the
// code that runs the rows is built with -ffp-contract=off (host/attack/CMakeLists.txt, which the tests inherit), so
// that a * b + c is two roundings as written even on targets with FMA.
#if defined(__CUDA_ARCH__)
NUDGE_HD double nudge_dmul(double a, double b) { return __dmul_rn(a, b); }
NUDGE_HD double nudge_dadd(double a, double b) { return __dadd_rn(a, b); }
#else
NUDGE_HD double nudge_dmul(double a, double b) { return a * b; }
NUDGE_HD double nudge_dadd(double a, double b) { return a + b; }
#endif

// Minimum and maximum of doubles written out, the same expression on both sides (std::min/std::max's semantics):
// fmin/fmax may return either zero of fmin(0.0, -0.0), which could differ between the host's libm and the device,
// and on the host they are library calls in the row code's inner loops.
NUDGE_HD double nudge_dmin(double a, double b) { return b < a ? b : a; }
NUDGE_HD double nudge_dmax(double a, double b) { return a < b ? b : a; }
