#!/usr/bin/env bash
# Installs what nudge needs from Debian's packages (run as root or with sudo). Safe to re-run.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config libopenblas-dev libpng-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libbenchmark-dev npm ca-certificates)
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
