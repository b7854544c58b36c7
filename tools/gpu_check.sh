#!/usr/bin/env bash
# The one command for a lent GPU machine, in two halves.
#
#   tools/gpu_check.sh --pack      HERE (the build machine): builds build-gpu/ (Release, NUDGE_CUDA=ON), stages
#                                  build-gpu/bundle/ (the test tree, binaries, the shared libraries the GPU machine
#                                  may lack, MNIST) and packs it into build-gpu/bundle.tar.gz (~30 MB; unpacked it
#                                  would pass the 64 MiB a device call carries). Carry only that file:
#                                  carry ["build-gpu/bundle.tar.gz"].
#   tools/gpu_check.sh [STAGES]    THERE, from the repository root: unpacks the bundle, restores the build tree, finds
#                                  cuDNN/cuBLAS in the PyTorch install, and runs the stages (default: all):
#                                    info     card, driver, nvcc, cuDNN, cuBLAS
#                                    tests    ctest, every suite (counts run / passed / skipped / failed)
#                                    sanitize compute-sanitizer memcheck + racecheck on the CUDA test binaries
#                                    train    nudge train --epochs 1 --device cuda
#                                    bench    tools/bench/bench_cuda_optimize, nudge optimize end to end on
#                                             100,000 rows (fused and layers), tools/bench/bench_engine_host
#                                    profile  ncu (Speed Of Light, occupancy) on the optimize kernels, both paths
#                                  then prints a markdown report for docs/gpu-runs.md (also written to
#                                  $OUT/gpu-report.md when $OUT is set, stage by stage, so a timeout keeps what ran).
#
# A device call may run 10 minutes at most; if all stages do not fit, run e.g. "info tests train bench" in one
# call and "sanitize profile" in another (each of its four sanitizer runs stops after GPU_CHECK_SANITIZER_TIMEOUT seconds,
# default 140). Stage logs go to $OUT (or /tmp/nudge-gpu-check).
#
# Paths: CMake and the test binaries embed the absolute path of the tree they were built in (ctest files,
# NUDGE_SOURCE_DIR, NUDGE_BINARY). The bundle records it; when the tree sits elsewhere on the GPU machine, a
# symbolic link from the recorded path to the current tree makes those paths valid there (the machine runs as root).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-gpu"
bundle="$build/bundle"
tarball="$build/bundle.tar.gz"
say() { echo "gpu_check: $*" >&2; }
die() {
  echo "gpu_check: error: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------------------------------
# --pack: build here and stage the bundle
# ---------------------------------------------------------------------------------------------------------------------

# Shared libraries a binary needs that are not the GPU machine's own: everything but glibc, the C++ runtime (the GPU
# machine's is newer), and the CUDA libraries that come from its driver and PyTorch install.
bundle_libs_of() {
  ldd "$1" | awk '/=> \// { print $1, $3 }' |
    grep -Ev '^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda\.so|libcudnn|libcublas|libcudart|libnvidia|libnvrtc|libnvJitLink)'
}

pack() {
  command -v cmake >/dev/null || die "cmake not found"
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  say "configuring $build (Release, NUDGE_CUDA=ON)"
  cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DNUDGE_CUDA=ON >/dev/null || die "configure failed"
  say "building (this takes a while on two cores)"
  cmake --build "$build" -j"$(nproc)" || die "build failed"

  rm -rf "$bundle"
  mkdir -p "$bundle/lib" "$bundle/tree"
  echo "$root" >"$bundle/PACK_ROOT"
  # The test tree: ctest files, discovered test lists, and the binaries, at their places under build-gpu/.
  (
    cd "$build" || exit 1
    find . -path ./bundle -prune -o \( -name 'CTestTestfile.cmake' -o -name '*_include.cmake' -o -name '*_tests.cmake' \) -print
    find . -path ./bundle -prune -o -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \) -print
  ) | while read -r f; do
    mkdir -p "$bundle/tree/$(dirname "$f")"
    cp -p "$build/$f" "$bundle/tree/$f"
  done
  # Release binaries carry no debug info, but strip what symbol tables there are to keep the bundle small.
  find "$bundle/tree" -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \) -exec strip --strip-unneeded {} + 2>/dev/null

  local bins
  bins=$(find "$bundle/tree" -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \))
  for b in $bins; do bundle_libs_of "$b"; done | sort -u | while read -r soname path; do
    cp -L "$path" "$bundle/lib/$soname"
    # Libraries' own dependencies (libopenblas -> libgfortran -> libquadmath).
    bundle_libs_of "$path" | while read -r s2 p2; do [ -e "$bundle/lib/$s2" ] || cp -L "$p2" "$bundle/lib/$s2"; done
  done

  # MNIST for the training stage (data/mnist is git-ignored, so it does not travel with the tree by itself).
  if [ -f "$root/data/mnist/train-images-idx3-ubyte" ]; then
    mkdir -p "$bundle/mnist" && cp -p "$root"/data/mnist/*-ubyte "$bundle/mnist/"
  else
    say "data/mnist is missing (data/fetch_mnist.sh): the train stage will be skipped there"
  fi

  say "bundle: $(du -sh "$bundle" | cut -f1) (binaries $(du -sh "$bundle/tree" | cut -f1), libraries $(du -sh "$bundle/lib" | cut -f1)$([ -d "$bundle/mnist" ] && echo ", MNIST $(du -sh "$bundle/mnist" | cut -f1)"))"
  ls "$bundle/lib" | sed 's/^/  lib: /' >&2
  tar czf "$tarball" -C "$build" bundle || die "could not write $tarball"
  local kb
  kb=$(du -sk "$tarball" | cut -f1)
  say "packed $tarball: $((kb / 1024)) MiB"
  [ "$kb" -lt 56000 ] || say "WARNING: over 55 MiB; with the working tree it may pass the 64 MiB a device call carries"
  say "now: run(command='tools/gpu_check.sh', carry=['build-gpu/bundle.tar.gz'])"
}

# ---------------------------------------------------------------------------------------------------------------------
# default: run on the GPU machine
# ---------------------------------------------------------------------------------------------------------------------

logdir="${OUT:-/tmp/nudge-gpu-check}"
report="$logdir/gpu-report.md"
# Appends a line to the report file at once (so a timed-out call still returns what ran).
note() { printf '%s\n' "$*" >>"$report"; }

restore_tree() {
  if [ -f "$tarball" ] && { [ ! -f "$bundle/PACK_ROOT" ] || [ "$tarball" -nt "$bundle/PACK_ROOT" ]; }; then
    rm -rf "$bundle" && tar xzf "$tarball" -C "$build" || die "could not unpack $tarball"
  fi
  [ -f "$bundle/PACK_ROOT" ] || die "no bundle: run tools/gpu_check.sh --pack on the build machine and carry build-gpu/bundle.tar.gz"
  local packed
  packed="$(cat "$bundle/PACK_ROOT")"
  if [ "$packed" != "$root" ]; then
    if [ -L "$packed" ] || [ ! -e "$packed" ]; then
      mkdir -p "$(dirname "$packed")" && ln -sfn "$root" "$packed" || die "cannot link $packed -> $root (the tests embed that path)"
      say "linked $packed -> $root (paths embedded at build time)"
    else
      die "$packed exists and is not this tree; the tests embed that path: run from there or rebuild with --pack here"
    fi
  fi
  cp -a "$bundle/tree/." "$build/"
}

find_cuda_libs() {
  local dirs=("$bundle/lib")
  local py
  py=$(command -v python3 || true)
  if [ -n "$py" ]; then
    local sites
    sites=$("$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
    while read -r d; do
      [ -n "$d" ] && dirs+=("$d")
    done < <(for s in $sites; do
      find "$s/nvidia" "$s/torch/lib" \( -name 'libcudnn.so.9*' -o -name 'libcublas.so.1*' -o -name 'libcublasLt.so.1*' \) \
        -printf '%h\n' 2>/dev/null
    done | sort -u)
  fi
  [ -d /usr/local/cuda/lib64 ] && dirs+=(/usr/local/cuda/lib64)
  local IFS=:
  export LD_LIBRARY_PATH="${dirs[*]}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

stage_info() {
  local card driver nvccv
  card=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  nvccv=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*' | head -1)
  local cudnn cublas
  cudnn=$(ls $(echo "$LD_LIBRARY_PATH" | tr ':' ' ') 2>/dev/null | grep -o 'libcudnn\.so\.[0-9.]*' | sort -V | tail -1)
  cublas=$(ls $(echo "$LD_LIBRARY_PATH" | tr ':' ' ') 2>/dev/null | grep -o 'libcublas\.so\.[0-9.]*' | sort -V | tail -1)
  note "| card | ${card:-?} |"
  note "| driver | ${driver:-?} |"
  note "| nvcc | ${nvccv:-not found} |"
  note "| cuDNN, cuBLAS found | ${cudnn:-not found}, ${cublas:-not found} |"
  note "| build | $(cat "$bundle/PACK_ROOT") packed $(date -r "$bundle/PACK_ROOT" -u +%F 2>/dev/null), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo ?) |"
}

stage_tests() {
  say "ctest (all suites)"
  (cd "$build" && ctest --output-on-failure -j4 --timeout 900) >"$logdir/ctest.log" 2>&1
  local rc=$? total failed skipped
  total=$(grep -Eo 'tests failed out of [0-9]+' "$logdir/ctest.log" | grep -Eo '[0-9]+$' | tail -1)
  failed=$(grep -Eo '[0-9]+ tests failed out of' "$logdir/ctest.log" | grep -Eo '^[0-9]+' | tail -1)
  skipped=$(grep -c '(Skipped)' "$logdir/ctest.log")
  total=${total:-0}
  failed=${failed:-0}
  note ""
  note "**Tests** (ctest, every suite): ${total} tests, $((total - failed - skipped)) passed, ${skipped} skipped, ${failed} failed (exit $rc)."
  if [ "$skipped" -gt 0 ]; then
    note ""
    note "Skipped:"
    grep '(Skipped)' "$logdir/ctest.log" | sed -E 's/^ *[0-9]+ - /- /' | while read -r l; do note "$l"; done
  fi
  if [ "$failed" -gt 0 ]; then
    note ""
    note "Failed:"
    grep -E '\((Failed|Timeout|SEGFAULT|Subprocess aborted|Exception)' "$logdir/ctest.log" | sed -E 's/^ *[0-9]+ - /- /' |
      while read -r l; do note "$l"; done
  fi
  # Every test's output (device name, seeds, measured maxima) is in ctest's LastTest.log; keep a copy.
  cp "$build/Testing/Temporary/LastTest.log" "$logdir/ctest-all-output.log" 2>/dev/null
  grep -h '\[   INFO   \]' "$logdir/ctest-all-output.log" 2>/dev/null | sort -u | head -12 | while read -r l; do note "    $l"; done
}

# compute-sanitizer on one binary with one tool; returns a one-line verdict for the report.
# Logs go into one file: a device call returns at most 8 files from $OUT.
sanitize_one() {
  local tool=$1 bin=$2 filter=$3 log="$logdir/sanitize-run.tmp"
  timeout "${GPU_CHECK_SANITIZER_TIMEOUT:-140}" compute-sanitizer --tool "$tool" --error-exitcode 99 ${4:-} "$bin" --gtest_filter="$filter" >"$log" 2>&1
  local rc=$?
  { echo "===== compute-sanitizer --tool $tool $(basename "$bin") --gtest_filter=$filter (exit $rc)"; cat "$log"; } >>"$logdir/sanitize.log"
  local summary
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^========= //')
  local tests
  tests=$(grep -Eo '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+' "$log" | sed -E 's/^\[  ([A-Z]+) +\] ([0-9]+)/\2 \L\1/' |
    tr '\n' ',' | sed 's/,$//; s/,/, /g')
  note "| $tool | $(basename "$bin") ($filter) | ${summary:-no summary$([ $rc -eq 124 ] && echo ': timed out')} | ${tests:-?} | exit $rc |"
  rm -f "$log"
}

stage_sanitize() {
  command -v compute-sanitizer >/dev/null || {
    note ""
    note "**compute-sanitizer**: not found"
    return
  }
  say "compute-sanitizer (memcheck, racecheck)"
  note ""
  note "**compute-sanitizer**"
  note ""
  note "| tool | binary (tests) | summary | gtest | exit |"
  note "| --- | --- | --- | --- | --- |"
  local kt="$build/tests/test_cuda_kernels" pt="$build/tests/test_cuda_parity"
  : >"$logdir/sanitize.log"
  sanitize_one memcheck "$kt" '*'
  sanitize_one memcheck "$pt" 'Cuda*'
  sanitize_one racecheck "$kt" 'CudaKernels.*:CudaLossKernels.*' '--racecheck-report analysis'
  # cuDNN's kernels make racecheck very slow: the parity binary's network paths once each, small inputs.
  sanitize_one racecheck "$pt" 'CudaBackendParity.Predict:CudaBackendParity.OptimizeChunkWithoutEarlyStop' '--racecheck-report analysis'
}

stage_train() {
  local data=""
  if [ -f "$root/data/mnist/train-images-idx3-ubyte" ]; then
    data="$root/data/mnist"
  elif [ -f "$bundle/mnist/train-images-idx3-ubyte" ]; then
    data="$bundle/mnist"
  fi
  note ""
  if [ -z "$data" ]; then
    note "**Training**: skipped (no MNIST: pack with data/mnist present)"
    return
  fi
  say "training one epoch on $data"
  local t0 ms
  t0=$(date +%s%N)
  "$build/nudge" train --epochs 1 --device cuda --data "$data" --out /tmp/m.safetensors >"$logdir/train.log" 2>&1
  local rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  local line which
  line=$(tr '\r' '\n' <"$logdir/train.log" | grep -E '^trained|^epoch 1/1:' | tr '\n' ' ')
  which="MNIST from $data"
  note "**Training** (\`nudge train --epochs 1 --device cuda\`, $which): exit $rc, ${ms} ms wall. ${line}"
  [ "$rc" -eq 0 ] || note "    $(tr '\r' '\n' <"$logdir/train.log" | grep -v '^$' | tail -1)"
  grep -m1 'nudge train:' "$logdir/train.log" | sed 's/^/    /' | while read -r l; do note "    $l"; done
}

stage_bench() {
  local b="$build/tools/bench/bench_cuda_optimize"
  [ -x "$b" ] || {
    note ""
    note "**Benchmarks**: $b not built"
    return
  }
  say "benchmarks"
  "$b" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_counters_tabular=true \
    >"$logdir/bench.log" 2>&1
  local rc=$?
  note ""
  note "**Benchmarks** (\`bench_cuda_optimize\`, median of 3; exit $rc):"
  note ""
  note '```'
  grep -E '^(BM_|-{5}|Benchmark)' "$logdir/bench.log" | grep -Ev '_(mean|stddev|cv) ' | while IFS= read -r l; do note "$l"; done
  note '```'

  # End to end through the engine (start images, overlapping chunks, every output file): the figure users see.
  local model="$root/data/models/mnist_cnn.safetensors" path rc2
  for path in fused layers; do
    say "nudge optimize, --path $path"
    "$build/nudge" optimize --model "$model" --device cuda --path "$path" --init noise --count 100000 --target all \
      --steps 20 --out "/tmp/nudge-optimize-$path" --quiet >"$logdir/optimize-$path.log" 2>&1
    rc2=$?
    note ""
    note "**nudge optimize** (\`--init noise --count 100000 --target all --steps 20 --path $path\`): exit $rc2; $(tail -1 "$logdir/optimize-$path.log")"
  done

  # PyTorch on the very same job and card (same weights, same Philox noise start images, Adam lr 0.1, 20 steps,
  # no early stop), eager and compiled, against the fused run above: nudge's end-to-end speed over PyTorch's best
  # batch size (steps only on PyTorch's side).
  local py=""
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch, numpy' >/dev/null 2>&1; then
      py=$p
      break
    fi
  done
  if [ -z "$py" ]; then
    note ""
    note "**PyTorch peer**: skipped (no python3 with torch and numpy)"
  else
    local mode flag nudge_rate peer_rate
    nudge_rate=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["image_steps_per_s"])' \
      /tmp/nudge-optimize-fused/summary.json 2>/dev/null || echo "")
    for mode in eager compile; do
      flag=()
      [ "$mode" = compile ] && flag=(--compile)
      say "PyTorch peer, $mode"
      "$py" "$root/tools/bench/pytorch_peer.py" optimize --device cuda "${flag[@]}" --n 100000 --steps 20 \
        --batch 4096,16384,65536 >"$logdir/peer-$mode.log" 2>&1
      peer_rate=$(tail -1 "$logdir/peer-$mode.log" | "$py" -c 'import json,sys; print(json.loads(sys.stdin.read())["best_image_steps_per_s"])' 2>/dev/null || echo "")
      note ""
      if [ -n "$peer_rate" ] && [ -n "$nudge_rate" ]; then
        note "**PyTorch $($py -c 'import torch; print(torch.__version__)') $mode**, same job: best $(printf '%.0f' "$peer_rate") image-steps/s; nudge (fused, end to end) $(printf '%.0f' "$nudge_rate"): **$($py -c "print(f'{$nudge_rate / $peer_rate:.2f}')")x**"
      else
        note "**PyTorch $mode**: no figure ($(tail -1 "$logdir/peer-$mode.log" | cut -c1-200))"
      fi
    done
  fi

  # The engine's host side alone (what feeds the card), on this machine's cores.
  local h="$build/tools/bench/bench_engine_host"
  if [ -x "$h" ]; then
    say "engine host benchmark"
    "$h" >"$logdir/bench_host.log" 2>&1
    note ""
    note "**Engine host side** (\`bench_engine_host\`, rows/s; exit $?):"
    note ""
    note '```'
    grep -E '^BM_' "$logdir/bench_host.log" | while IFS= read -r l; do note "$l"; done
    note '```'
  fi
}

# Nsight Compute on the optimize path: every kernel of a few steps, Speed Of Light and occupancy, per path. The
# summary table says per kernel whether compute (SM %) or memory (DRAM %) bounds it; docs/fused-kernel.md and
# docs/cuda-backend.md hold the floors to compare with.
stage_profile() {
  note ""
  if ! command -v ncu >/dev/null 2>&1; then
    note "**Profile**: skipped (no ncu on PATH)"
    return
  fi
  local model="$root/data/models/mnist_cnn.safetensors" path rc3 filter
  for path in fused layers; do
    say "ncu, --path $path"
    # 16,384 entries fill the card. Fused: its own launches after the first. Layers: skip the start-image predict
    # and the first step (algorithm choice), then take a few steps' kernels.
    if [ "$path" = fused ]; then
      filter=(--kernel-name regex:fused --launch-skip 1 --launch-count 5)
    else
      filter=(--launch-skip 40 --launch-count 60)
    fi
    ncu --target-processes all --section SpeedOfLight --section Occupancy "${filter[@]}" \
      --csv --page details "$build/nudge" optimize --model "$model" --device cuda --path "$path" --init noise \
      --count 16384 --target all --steps 10 --out "/tmp/nudge-profile-$path" --quiet >"$logdir/ncu-$path.csv" 2>&1
    rc3=$?
    note "**Profile, --path $path** (\`ncu --section SpeedOfLight --section Occupancy\`, 16,384 entries; exit $rc3):"
    note ""
    python3 "$root/tools/ncu_summary.py" "$logdir/ncu-$path.csv" >"$logdir/ncu-$path.md" 2>&1 ||
      note "    (no summary: $(tail -1 "$logdir/ncu-$path.md"); raw output in ncu-$path.csv)"
    while IFS= read -r l; do note "$l"; done <"$logdir/ncu-$path.md"
    note ""
  done
}

run_checks() {
  local stages=("$@")
  [ ${#stages[@]} -gt 0 ] || stages=(info tests sanitize train bench profile)
  mkdir -p "$logdir"
  : >"$report"
  restore_tree
  find_cuda_libs
  note "### $(date -u '+%F %H:%M UTC') — tools/gpu_check.sh ${stages[*]}"
  note ""
  note "| | |"
  note "| --- | --- |"
  for s in "${stages[@]}"; do
    case "$s" in
      info) stage_info ;;
      tests) stage_tests ;;
      sanitize) stage_sanitize ;;
      train) stage_train ;;
      bench) stage_bench ;;
      profile) stage_profile ;;
      *) die "unknown stage '$s' (info tests sanitize train bench profile)" ;;
    esac
  done
  echo
  echo "----- paste into docs/gpu-runs.md -----"
  cat "$report"
}

case "${1:-}" in
  --pack) pack ;;
  -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d' ;;
  *) run_checks "$@" ;;
esac
