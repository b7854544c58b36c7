#include "cpu_isa.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"

namespace nudge::cpu {

namespace {

CpuIsa widest_supported() {
  if (cpu_isa_supported(CpuIsa::Avx512)) return CpuIsa::Avx512;
  if (cpu_isa_supported(CpuIsa::Avx2)) return CpuIsa::Avx2;
  return CpuIsa::Scalar;
}

CpuIsa chosen_isa() {
  const char* env = std::getenv("NUDGE_CPU_ISA");
  if (!env || !*env) return widest_supported();
  for (CpuIsa isa : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512})
    if (std::strcmp(env, cpu_isa_name(isa)) == 0) {
      if (!cpu_isa_supported(isa))
        throw InputError(std::string("NUDGE_CPU_ISA=") + env + ": this CPU does not support " + env);
      return isa;
    }
  throw InputError(std::string("NUDGE_CPU_ISA=") + env + ": expected scalar, avx2 or avx512");
}

}  // namespace

bool cpu_isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Scalar: return true;
#if NUDGE_X86_KERNELS
    // libgcc's checks include the OS's XSAVE support for the wider registers.
    case CpuIsa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::Avx512: return __builtin_cpu_supports("avx512f");
#else
    default: return false;
#endif
  }
  return false;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Scalar: return "scalar";
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::Avx512: return "avx512";
  }
  return "?";
}

CpuIsa best_cpu_isa() {
  static const CpuIsa isa = chosen_isa();
  return isa;
}

}  // namespace nudge::cpu
