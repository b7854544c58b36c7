/* Start-up probe: asks the runtime for the attributes of a trivial kernel, which makes it pick (or JIT) an image of
 * this binary's device code for the current device. A device the compiled architectures (sm_90 SASS + compute_90
 * PTX by default) do not cover fails here with cudaErrorNoKernelImageForDevice instead of at the first real launch;
 * a driver too old for the embedded PTX fails with cudaErrorUnsupportedPtxVersion.
 * Checked by tests/test_cuda_parity_backend.cpp: CudaAvailability.* via cuda_device_usable().
 */
#include "device_probe.cuh"

namespace nudge::cuda {

namespace {

__global__ void probe_kernel(int* out) {
  if (out) *out = 1;
}

}  // namespace

cudaError_t kernel_image_status_cuda() {
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, probe_kernel);
  if (e != cudaSuccess) cudaGetLastError();  // not sticky; clear it for the caller
  return e;
}

}  // namespace nudge::cuda
