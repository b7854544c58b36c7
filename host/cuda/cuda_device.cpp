// cuda_device_usable(): whether this process can run the CUDA backend, and if not a short reason. Must work on a
// machine with no driver at all (the runtime is linked statically, so the binary starts and the runtime reports
// the missing driver as an error here).
#include <cuda_runtime_api.h>

#include <sstream>
#include <string>
#include <vector>

#include "cuda_backend.h"
#include "device_probe.cuh"

#ifndef NUDGE_CUDA_ARCHITECTURES
#define NUDGE_CUDA_ARCHITECTURES "90-real,90-virtual"
#endif

namespace nudge {

namespace {

std::string error_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

// Whether a device of compute capability major.minor can run code built for the CMake architecture list `archs`
// ("90-real,90-virtual", "80;90a-real", ...; cmake/cuda.cmake passes it with commas): SASS for sm_XY runs on X.y with y >= Y (sm_XYa only on X.Y exactly);
// PTX for compute_XY is JIT-compiled for any X.Y and newer. A plain "XY" means both.
bool architectures_cover(const std::string& archs, int major, int minor, std::string* described) {
  const int cc = major * 10 + minor;
  bool ok = false;
  std::ostringstream d;
  std::string list = archs;
  for (char& c : list)
    if (c == ',') c = ';';
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ';')) {
    if (item.empty()) continue;
    const bool real_only = item.find("-real") != std::string::npos;
    const bool virtual_only = item.find("-virtual") != std::string::npos;
    int v = 0;
    size_t digits = 0;
    try {
      v = std::stoi(item, &digits);
    } catch (...) {
      continue;
    }
    // "90a": arch-specific, this exact capability only; "100f": family-specific, same major, minor >= .
    const char suffix = digits < item.size() && item[digits] != '-' ? item[digits] : '\0';
    const bool same_family = major == v / 10 && minor >= v % 10;
    const bool covered_sass = suffix == 'a' ? cc == v : same_family;
    const bool covered_ptx = suffix == 'a' ? cc == v : suffix == 'f' ? same_family : cc >= v;
    const std::string name = std::to_string(v) + (suffix ? std::string(1, suffix) : std::string());
    if (!virtual_only) {
      d << (d.tellp() > 0 ? ", " : "") << "SASS sm_" << name;
      ok = ok || covered_sass;
    }
    if (!real_only) {
      d << (d.tellp() > 0 ? ", " : "") << "PTX compute_" << name;
      ok = ok || covered_ptx;
    }
  }
  *described = d.str();
  return ok;
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

bool cuda_device_usable(std::string* why) {
  std::string scratch;
  std::string& reason = why ? *why : scratch;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    reason = "no CUDA device found (" + error_text(e) + ")";
    return false;
  }
  if (count == 0) {
    reason = "no CUDA device found (cudaErrorNoDevice: the driver reports no CUDA-capable device)";
    return false;
  }
  int device = 0;
  cudaDeviceProp prop{};
  cudaError_t pe = cudaGetDevice(&device);
  if (pe == cudaSuccess) pe = cudaGetDeviceProperties(&prop, device);
  if (pe != cudaSuccess) {
    cudaGetLastError();
    reason = "CUDA device " + std::to_string(device) + " cannot be queried (" + error_text(pe) + ")";
    return false;
  }
  std::string described;
  if (!architectures_cover(NUDGE_CUDA_ARCHITECTURES, prop.major, prop.minor, &described)) {
    reason = "CUDA device " + std::to_string(device) + " (" + prop.name + ", compute capability " +
             std::to_string(prop.major) + "." + std::to_string(prop.minor) + ") is not covered by this build's " +
             "architectures " NUDGE_CUDA_ARCHITECTURES " (" + described + "); rebuild with -DNUDGE_CUDA_ARCHITECTURES=" +
             std::to_string(prop.major) + std::to_string(prop.minor) + "-real";
    return false;
  }
  const cudaError_t ke = nudge::cuda::kernel_image_status_cuda();
  if (ke != cudaSuccess) {
    reason = "CUDA device " + std::to_string(device) + " (" + prop.name + ") cannot load nudge's kernels (" +
             error_text(ke) + "); a newer driver or a build for this card is needed";
    return false;
  }
  reason.clear();
  return true;
}

}  // namespace nudge
