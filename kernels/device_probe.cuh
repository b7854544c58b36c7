// Whether this binary's kernels can run on the current device (a compatible SASS or PTX image is present).
#pragma once
#include <cuda_runtime_api.h>

namespace nudge::cuda {

// cudaSuccess, or the error the runtime gives for loading a kernel (cudaErrorNoKernelImageForDevice,
// cudaErrorUnsupportedPtxVersion, ...). Launches nothing; the caller has selected the device.
cudaError_t kernel_image_status_cuda();

}  // namespace nudge::cuda
