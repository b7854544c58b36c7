// The instruction set of the CPU backend's hand-vectorised kernels (column_gemm.h, layers_isa.h), chosen once
// per process. Every choice gives the same bits; only the speed differs.
#pragma once

namespace nudge::cpu {

enum class CpuIsa { Scalar, Avx2, Avx512 };

// The widest instruction set this CPU and OS support (NUDGE_CPU_ISA=scalar|avx2|avx512 narrows it, for
// benchmarks; an unsupported or unknown value is an InputError).
CpuIsa best_cpu_isa();
bool cpu_isa_supported(CpuIsa isa);
const char* cpu_isa_name(CpuIsa isa);

}  // namespace nudge::cpu
