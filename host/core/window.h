// The geometry that convolutions and pools share: a k x k window moved by `stride`, over a map padded by `pad` on
// every side. A plain struct so that CUDA kernels take it by value.
#pragma once

#include "host_device.h"

namespace nudge {

struct Window {
  int k = 1, stride = 1, pad = 0;
  // floor((in + 2 pad - k) / stride) + 1, PyTorch's and ONNX's rule without ceil_mode; the caller has checked
  // in + 2 pad >= k.
  NUDGE_HD int out(int in) const { return (in + 2 * pad - k) / stride + 1; }
  NUDGE_HD bool plain() const { return stride == 1 && pad == 0; }
};

}  // namespace nudge
