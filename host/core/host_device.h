// NUDGE_HD marks a function that nvcc compiles for both host and device and a plain compiler as inline, so that one
// source of a piece of maths serves the CPU backend, the CUDA kernels and the CPU tests of the device's arithmetic.
#pragma once

#if defined(__CUDACC__)
#define NUDGE_HD __host__ __device__ __forceinline__
#else
#define NUDGE_HD inline
#endif
