#!/usr/bin/env bash
# Builds nudge and runs every test suite (GPU tests skip, with their reason, on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
