#!/usr/bin/env bash
# Configures and builds nudge in build/ (Release). NUDGE_CUDA=AUTO compiles the CUDA backend when the toolkit,
# cuDNN and cuBLAS are found; pass e.g. NUDGE_CUDA=OFF in the environment to skip it.
set -euo pipefail
cd "$(dirname "$0")/.."
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DNUDGE_CUDA="${NUDGE_CUDA:-AUTO}"
fi
cmake --build build -j"$(nproc)"
