#!/usr/bin/env bash
# The one command for a lent GPU machine, in two halves, and a rehearsal of the second half here.
#
#   tools/gpu_check.sh --pack        HERE (the build machine): builds build-gpu/ (Release, NUDGE_CUDA=ON, per-test
#                                    timeout sized to the card's suite) through the alias path (see Paths),
#                                    stages build-gpu/bundle/ (the ctest tree, binaries, the shared libraries the GPU
#                                    machine may lack, MNIST test and train splits) and packs build-gpu/bundle.tar.gz.
#                                    Carry only that file: carry ["build-gpu/bundle.tar.gz"].
#   tools/gpu_check.sh [STAGES]      THERE, from the repository root: unpacks the bundle, restores the build tree,
#                                    finds cuDNN/cuBLAS in the PyTorch install, and runs the stages (default: all,
#                                    in this order), each inside its own time box (docs/gpu-runs.md, "Budget"), the
#                                    whole at most GPU_CHECK_BUDGET seconds (default 480 = 8 minutes):
#                                      info     card, driver, cuDNN and cuBLAS runtime versions
#                                      tests    ctest: the CUDA suites first, then the rest; counts per group
#                                      sanitize compute-sanitizer memcheck + racecheck, small shapes
#                                      train    nudge train --epochs 1 --device cuda on MNIST
#                                      bench    bench_cuda_optimize, nudge optimize 100,000 rows (fused, layers),
#                                               the PyTorch peer (eager and compiled) on the same job
#                                      profile  ncu --clock-control none on the optimize kernels, both paths
#   tools/gpu_check.sh --rehearse [STAGES]
#                                    HERE, without a GPU: copies the tree as the device tool would (tracked and
#                                    untracked-not-ignored files) plus the bundle into a fresh folder, runs the
#                                    second half there with NUDGE_REQUIRE_GPU=1, and checks what the card's run
#                                    would leave: the files under $OUT (at most 8), the report, the exit status.
#
# On the card NUDGE_REQUIRE_GPU=1 is set: a GPU test that would skip (no device, a failed probe, a build without
# CUDA) fails instead, and the check exits non-zero naming it. GPU_CHECK_REQUIRE_GPU=0 turns that off.
#
# Output: $OUT (or $GPU_CHECK_WORK/out) holds gpu-report.md, written stage by stage, and gpu-logs.tar.gz, rebuilt
# after every stage from the logs kept outside $OUT (every stage log, ctest's full output with the measured error
# maxima, sanitizer logs, ncu CSVs, the cuDNN algorithm log). Never more than three files (the third an unfinished
# tarball for an instant), so a killed call still returns all of them. The report also goes to stdout at the end.
#
# Paths: CMake and the test binaries embed the absolute path of the tree they were built in (ctest files,
# NUDGE_SOURCE_DIR, NUDGE_BINARY). --pack builds through the alias /tmp/nudge-gpu-check-root, a symbolic link to
# this tree; the GPU half points that link at the tree it runs in, so the embedded paths lead there, on the card and
# in a rehearsal.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$root/tools/gpu_check.sh"
alias_root=/tmp/nudge-gpu-check-root
build="$root/build-gpu"
bundle="$build/bundle"
tarball="$build/bundle.tar.gz"
work="${GPU_CHECK_WORK:-/tmp/nudge-gpu-check}"
outdir="${OUT:-$work/out}"
logs="$work/logs"
report="$outdir/gpu-report.md"
say() { echo "gpu_check: $*" >&2; }
die() {
  echo "gpu_check: error: $*" >&2
  exit 1
}

all_stages=(info tests sanitize train bench profile)
# The budget (seconds): docs/gpu-runs.md states each box with its reasoning; keep the two in step. setup and
# wrap-up are the unpacking before the stages and the final tarball after them.
declare -A box=([setup]=20 [info]=10 [tests]=150 [sanitize]=90 [train]=40 [bench]=120 [profile]=45 [wrapup]=5)
budget="${GPU_CHECK_BUDGET:-480}"
# Inside the tests stage: the CUDA suites, then the rest, each under its own bound; per-test timeout at pack time.
cuda_tests_box=72 other_tests_box=68 card_test_timeout=60
cuda_test_regex='^(Cuda|Fused|BothPaths/Cuda|OptimizeFixture)'
test_jobs="${GPU_CHECK_TEST_JOBS:-8}"  # ctest -j on the card's 16 cores (each test up to 2 OpenMP threads)

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
  ln -sfn "$root" "$alias_root" || die "cannot link $alias_root -> $root"
  say "configuring $alias_root/build-gpu (Release, NUDGE_CUDA=ON, per-test timeout ${card_test_timeout} s)"
  cmake -S "$alias_root" -B "$alias_root/build-gpu" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DNUDGE_CUDA=ON \
    -DNUDGE_TEST_TIMEOUT="$card_test_timeout" >/dev/null || die "configure failed"
  say "building (this takes a while on two cores)"
  cmake --build "$alias_root/build-gpu" -j"${GPU_CHECK_JOBS:-$(nproc)}" || die "build failed"

  rm -rf "$bundle"
  mkdir -p "$bundle/lib" "$bundle/tree"
  echo "$alias_root" >"$bundle/PACK_ROOT"
  git -C "$root" rev-parse --short HEAD >"$bundle/COMMIT" 2>/dev/null || echo "?" >"$bundle/COMMIT"
  # The test tree: ctest files, discovered test lists, and the binaries, at their places under build-gpu/.
  (
    cd "$build" || exit 1
    find . -path ./bundle -prune -o \( -name 'CTestTestfile.cmake' -o -name '*_include.cmake' -o -name '*_tests.cmake' \) -print
    find . -path ./bundle -prune -o -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \) -print
  ) | while read -r f; do
    mkdir -p "$bundle/tree/$(dirname "$f")"
    cp -p "$build/$f" "$bundle/tree/$f"
  done
  find "$bundle/tree" -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \) -exec strip --strip-unneeded {} + 2>/dev/null

  local bins
  bins=$(find "$bundle/tree" -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \))
  for b in $bins; do bundle_libs_of "$b"; done | sort -u | while read -r soname path; do
    cp -L "$path" "$bundle/lib/$soname"
    # Libraries' own dependencies (libopenblas -> libgfortran -> libquadmath).
    bundle_libs_of "$path" | while read -r s2 p2; do [ -e "$bundle/lib/$s2" ] || cp -L "$p2" "$bundle/lib/$s2"; done
  done

  # MNIST (git-ignored, so it does not travel with the tree): the test split always (the MNIST-dependent tests),
  # the train split too (the train stage); gzip takes the four files from 53 MB to ~11 MB.
  if [ -f "$root/data/mnist/t10k-images-idx3-ubyte" ]; then
    mkdir -p "$bundle/mnist" && cp -p "$root"/data/mnist/*-ubyte "$bundle/mnist/"
  else
    say "WARNING: data/mnist is missing (data/fetch_mnist.sh): the train stage and the MNIST tests will not run there"
  fi

  say "bundle: $(du -sh "$bundle" | cut -f1) (binaries $(du -sh "$bundle/tree" | cut -f1), libraries $(du -sh "$bundle/lib" | cut -f1)$([ -d "$bundle/mnist" ] && echo ", MNIST $(du -sh "$bundle/mnist" | cut -f1)"))"
  tar czf "$tarball" -C "$build" bundle || die "could not write $tarball"
  local kb
  kb=$(du -sk "$tarball" | cut -f1)
  say "packed $tarball: $((kb / 1024)) MiB"
  [ "$kb" -lt 56000 ] || say "WARNING: over 55 MiB; with the working tree it may pass the 64 MiB a device call carries"
  say "now: run(command='tools/gpu_check.sh', carry=['build-gpu/bundle.tar.gz'], timeout_s=560)"
}

# ---------------------------------------------------------------------------------------------------------------------
# the GPU half
# ---------------------------------------------------------------------------------------------------------------------

# Appends a line to the report at once (a killed call still returns what ran).
note() { printf '%s\n' "$*" >>"$report"; }
now() { date +%s; }

# Keeps every log at its last 3 MiB and rebuilds the one tarball of logs in $OUT (written aside, then renamed, so
# $OUT holds a complete tarball at every instant).
snapshot_logs() {
  local f
  for f in "$logs"/*; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt 3145728 ]; then
      tail -c 3145728 "$f" >"$f.cut" && mv "$f.cut" "$f"
    fi
  done
  tar czf "$outdir/gpu-logs.tar.gz.part" -C "$work" logs 2>/dev/null && mv "$outdir/gpu-logs.tar.gz.part" "$outdir/gpu-logs.tar.gz"
}

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
      die "$packed exists and is not a link; the tests embed that path: remove it or rebuild with --pack"
    fi
  fi
  cp -a "$bundle/tree/." "$build/"
  if [ -d "$bundle/mnist" ] && [ ! -f "$root/data/mnist/t10k-images-idx3-ubyte" ]; then
    mkdir -p "$root/data/mnist" && cp -p "$bundle/mnist/"* "$root/data/mnist/"
  fi
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

# Runtime versions of the libraries the binaries will load (same LD_LIBRARY_PATH), asked of the libraries
# themselves: cudnnGetVersion(), cublasGetVersion_v2() (the handle argument is unused for the version).
library_versions() {
  python3 - <<'EOF' 2>&1
import ctypes
def ask(names, fn):
    for n in names:
        try:
            lib = ctypes.CDLL(n)
        except OSError:
            continue
        try:
            return fn(lib)
        except Exception as e:
            return "loaded %s, version call failed: %s" % (n, e)
    return "not found"
def cudnn(lib):
    lib.cudnnGetVersion.restype = ctypes.c_size_t
    v = lib.cudnnGetVersion()
    return "%d.%d.%d (cudnnGetVersion %d)" % (v // 10000, v // 100 % 100, v % 100, v)
def cublas(lib):
    v = ctypes.c_int(0)
    st = lib.cublasGetVersion_v2(None, ctypes.byref(v))
    return "%d.%d.%d (cublasGetVersion %d, status %d)" % (v.value // 10000, v.value // 100 % 100, v.value % 100, v.value, st)
print("cudnn=" + ask(["libcudnn.so.9", "libcudnn.so"], cudnn))
print("cublas=" + ask(["libcublas.so.13", "libcublas.so.12", "libcublas.so"], cublas))
def cuda(lib):
    v = ctypes.c_int(0)
    st = lib.cuDriverGetVersion(ctypes.byref(v))
    return "%d.%d (status %d)" % (v.value // 1000, v.value % 1000 // 10, st)
print("cuda=" + ask(["libcuda.so.1"], cuda))
EOF
}

stage_info() {
  local card driver
  card=$(nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  local v cudnn cublas cudadrv
  v=$(library_versions)
  echo "$v" >"$logs/info.log"
  nvidia-smi >>"$logs/info.log" 2>&1
  cudnn=$(echo "$v" | sed -n 's/^cudnn=//p')
  cublas=$(echo "$v" | sed -n 's/^cublas=//p')
  cudadrv=$(echo "$v" | sed -n 's/^cuda=//p')
  note "| card | ${card:-no nvidia-smi answer} |"
  note "| driver | ${driver:-?} (CUDA driver API ${cudadrv:-?}) |"
  note "| cuDNN runtime | ${cudnn:-?} |"
  note "| cuBLAS runtime | ${cublas:-?} |"
  note "| build | commit $(cat "$bundle/COMMIT" 2>/dev/null || echo ?), packed $(date -r "$bundle/PACK_ROOT" -u '+%F %H:%M' 2>/dev/null) UTC, built for sm_90 + compute_90 PTX |"
  note "| NUDGE_REQUIRE_GPU | ${NUDGE_REQUIRE_GPU:-unset} |"
}

# ctest status lines ("  3/57 Test  #12: Suite.Name [# GetParam() = fused] ......***Failed    0.31 sec") ->
# "name<TAB>status".
ctest_results() {
  sed -nE 's/^ *[0-9]+\/[0-9]+ +Test +#[0-9]+: ([^ ]+) .*(\*\*\*| )(Passed|Failed|Skipped|Timeout|Not Run|Exception|SEGFAULT|Subprocess aborted).*/\1\t\3/p' "$@"
}

# The names of the tests whose output in ctest's LastTest.log says they were a skip turned into a failure.
skip_failures() {
  awk '/^[0-9]+\/[0-9]+ Test: /{name=$3} /GPU-test skip is a failure/{if (name != "") print name; name=""}' \
    "$build/Testing/Temporary/LastTest.log" 2>/dev/null | sort -u
}

count_group() {  # file-of-results, label
  local f=$1 label=$2 ran passed failed skipped timeout
  ran=$(wc -l <"$f")
  passed=$(grep -c $'\tPassed$' "$f")
  skipped=$(grep -c $'\tSkipped$' "$f")
  timeout=$(grep -c $'\tTimeout$' "$f")
  failed=$((ran - passed - skipped))
  note "| $label | $ran | $passed | $failed | $skipped | $timeout |"
}

stage_tests() {
  local all="$work/tests-all.tsv" cuda="$work/tests-cuda.tsv" rest="$work/tests-other.tsv" rc1 rc2
  # The two ctest bounds share the stage's box in the budget's proportions (72 + 68 of 150), so that when the box is
  # cut (the budget nearly spent) ctest still stops first and the summary below counts what ran.
  local stage_box=${GPU_CHECK_STAGE_BOX:-${box[tests]}}
  local cuda_tests_box=$((stage_box * cuda_tests_box / box[tests])) other_tests_box=$((stage_box * other_tests_box / box[tests]))
  # The CUDA suites first: they are what the card is for, and what a short box must not cut.
  (cd "$build" && OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 timeout -k 5 "$cuda_tests_box" \
    ctest -R "$cuda_test_regex" --output-on-failure -j"$test_jobs") >"$logs/ctest-cuda.log" 2>&1
  rc1=$?
  cp "$build/Testing/Temporary/LastTest.log" "$logs/ctest-cuda-output.log" 2>/dev/null
  skip_failures >"$work/skip-failures.txt"
  (cd "$build" && OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 timeout -k 5 "$other_tests_box" \
    ctest -E "$cuda_test_regex" --output-on-failure -j"$test_jobs") >"$logs/ctest-other.log" 2>&1
  rc2=$?
  cp "$build/Testing/Temporary/LastTest.log" "$logs/ctest-other-output.log" 2>/dev/null
  # The summary comes from the status lines ctest printed, so a run stopped by its box still counts what ran.
  ctest_results "$logs/ctest-cuda.log" >"$cuda"
  ctest_results "$logs/ctest-other.log" >"$rest"
  cat "$cuda" "$rest" >"$all"
  local listed_cuda listed_all
  listed_cuda=$(cd "$build" && ctest -N -R "$cuda_test_regex" 2>/dev/null | grep -Eo 'Total Tests: [0-9]+' | grep -Eo '[0-9]+')
  listed_all=$(cd "$build" && ctest -N 2>/dev/null | grep -Eo 'Total Tests: [0-9]+' | grep -Eo '[0-9]+')
  note ""
  note "**Tests** (ctest -j$test_jobs; CUDA suites under a ${cuda_tests_box} s bound, then the rest under ${other_tests_box} s; per-test timeout ${card_test_timeout} s; ctest exit $rc1, $rc2$([ "$rc1" = 124 ] && echo ', CUDA suites stopped at their bound')$([ "$rc2" = 124 ] && echo ', other suites stopped at their bound')):"
  note ""
  note "| group | ran | passed | failed | skipped | of which timeout |"
  note "| --- | --- | --- | --- | --- | --- |"
  count_group "$cuda" "CUDA suites (${listed_cuda:-?} listed)"
  count_group "$rest" "other suites ($((${listed_all:-0} - ${listed_cuda:-0})) listed)"
  local n
  n=$(grep -vc $'\tPassed$' "$all")
  if [ "$n" -gt 0 ]; then
    note ""
    note "Not passed:"
    grep -v $'\tPassed$' "$all" | while IFS=$'\t' read -r name status; do
      if grep -qxF "$name" "$work/skip-failures.txt"; then
        note "- $name: $status (a GPU-test skip turned failure by NUDGE_REQUIRE_GPU)"
      else
        note "- $name: $status"
      fi
    done
  fi
  local why
  why=$(grep -h -m1 -o 'GPU-test skip is a failure: .*' "$logs/ctest-cuda-output.log" 2>/dev/null | head -1)
  [ -n "$why" ] && note "" && note "Skip reason seen: \`${why#GPU-test skip is a failure: }\`"
  grep -h '\[   INFO   \]' "$logs/ctest-cuda-output.log" 2>/dev/null | sort -u | head -12 | while read -r l; do note "    $l"; done
  # The check fails on any test that did not pass, skips of CUDA tests included when they are required.
  local bad
  bad=$(grep -Ev $'\t(Passed|Skipped)$' "$all" | wc -l)
  if [ "${NUDGE_REQUIRE_GPU:-0}" != 0 ]; then bad=$((bad + $(grep -c $'\tSkipped$' "$cuda"))); fi
  [ "$bad" -eq 0 ] && [ "$rc1" != 124 ] && [ "$rc2" != 124 ]
}

# compute-sanitizer on one binary with one tool, under its own bound; one report line.
sanitize_one() {
  local tool=$1 secs=$2 bin=$3 filter=$4 log="$work/sanitize-run.tmp"
  timeout -k 5 "$secs" compute-sanitizer --tool "$tool" --error-exitcode 99 ${5:-} "$bin" --gtest_filter="$filter" >"$log" 2>&1
  local rc=$?
  { echo "===== compute-sanitizer --tool $tool $(basename "$bin") --gtest_filter=$filter (exit $rc)"; cat "$log"; } >>"$logs/sanitize.log"
  local summary tests
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^========= //')
  tests=$(grep -Eo '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+' "$log" | sed -E 's/^\[  ([A-Z]+) +\] ([0-9]+)/\2 \L\1/' |
    tr '\n' ',' | sed 's/,$//; s/,/, /g')
  note "| $tool | $(basename "$bin") \`$filter\` | ${secs} s | ${summary:-no summary$([ $rc -eq 124 ] && echo ': stopped at its bound')} | ${tests:-?} | $rc |"
  rm -f "$log"
  [ "$rc" -eq 0 ]
}

stage_sanitize() {
  note ""
  command -v compute-sanitizer >/dev/null || {
    note "**compute-sanitizer**: not on PATH"
    return 1
  }
  note "**compute-sanitizer** (each run under its own bound; small shapes):"
  note ""
  note "| tool | binary, tests | bound | summary | gtest | exit |"
  note "| --- | --- | --- | --- | --- | --- |"
  local kt="$build/tests/test_cuda_kernels" pt="$build/tests/test_cuda_parity" ft="$build/tests/test_cuda_fused" ok=0
  : >"$logs/sanitize.log"
  sanitize_one memcheck 18 "$kt" 'Cuda*' || ok=1
  sanitize_one memcheck 13 "$ft" 'FusedKernel.*:FusedChunk.SizesThatDoNotDivideTheTileMatchCpu' || ok=1
  sanitize_one memcheck 13 "$pt" 'CudaBackendParity.Predict:BothPaths/CudaOptimizeParity.ChunkWithoutEarlyStop/*' || ok=1
  # racecheck is slow on shared-memory-heavy kernels: the fused kernel on 37 entries for 3 steps (every phase,
  # tiles of 8 with a partial last tile), and the smem kernels of the layer path on their test shapes.
  sanitize_one racecheck 28 "$ft" 'FusedKernel.WritesEveryResultNothingPastTheEndAndLeavesStoppedEntriesAlone' '--racecheck-report analysis' || ok=1
  sanitize_one racecheck 14 "$kt" 'CudaKernels.BiasGrad:CudaKernels.CompactActive:CudaKernels.InputStep:CudaLossKernels.*' '--racecheck-report analysis' || ok=1
  return $ok
}

mnist_dir() {
  if [ -f "$root/data/mnist/train-images-idx3-ubyte" ]; then echo "$root/data/mnist"; fi
}

stage_train() {
  local data
  data=$(mnist_dir)
  note ""
  if [ -z "$data" ]; then
    note "**Training**: not run (no MNIST train split: pack with data/mnist present)"
    return 1
  fi
  local t0 ms rc
  t0=$(date +%s%N)
  timeout -k 5 35 "$build/nudge" train --epochs 1 --device cuda --data "$data" --out "$work/trained.safetensors" >"$logs/train.log" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  local line
  line=$(tr '\r' '\n' <"$logs/train.log" | grep -E '^trained|^epoch 1/1:' | tr '\n' ' ')
  note "**Training** (\`nudge train --epochs 1 --device cuda\`, MNIST from the bundle): exit $rc, ${ms} ms wall. ${line}"
  [ "$rc" -eq 0 ] || note "    $(tr '\r' '\n' <"$logs/train.log" | grep -v '^$' | tail -1)"
  [ "$rc" -eq 0 ]
}

stage_bench() {
  local b="$build/tools/bench/bench_cuda_optimize" ok=0 rc
  note ""
  if [ -x "$b" ]; then
    timeout -k 5 25 "$b" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_counters_tabular=true \
      >"$logs/bench.log" 2>&1
    rc=$?
    # Google Benchmark exits 0 when a benchmark reports an error: count those as a failure.
    local errors
    errors=$(grep -c 'ERROR OCCURRED' "$logs/bench.log")
    note "**Benchmarks** (\`bench_cuda_optimize\`, median of 3; exit $rc, $errors benchmark errors):"
    note ""
    note '```'
    if [ "$errors" -gt 0 ]; then
      grep -m1 'ERROR OCCURRED' "$logs/bench.log" | while IFS= read -r l; do note "$l"; done
    else
      grep -E '^(BM_|-{5}|Benchmark)' "$logs/bench.log" | grep -Ev '_(mean|stddev|cv) ' | while IFS= read -r l; do note "$l"; done
    fi
    note '```'
    [ "$rc" -eq 0 ] && [ "$errors" -eq 0 ] || ok=1
  else
    note "**Benchmarks**: $b not built"
    ok=1
  fi

  # End to end through the engine (start images, overlapping chunks, every output file): the figure users see.
  local model="$root/data/models/mnist_cnn.safetensors" path secs
  for path in fused layers; do
    secs=13
    [ "$path" = layers ] && secs=18
    NUDGE_CUDA_LOG="$logs/cudnn-algorithms.log" timeout -k 5 "$secs" "$build/nudge" optimize --model "$model" --device cuda \
      --path "$path" --init noise --count 100000 --target all --steps 20 --out "$work/optimize-$path" --quiet \
      >"$logs/optimize-$path.log" 2>&1
    rc=$?
    note ""
    note "**nudge optimize** (\`--init noise --count 100000 --target all --steps 20 --path $path\`: 100,000 rows, bound ${secs} s): exit $rc; $(tail -1 "$logs/optimize-$path.log")"
    [ "$rc" -eq 0 ] || ok=1
  done
  if [ -s "$logs/cudnn-algorithms.log" ]; then
    note ""
    note "cuDNN algorithms chosen (NUDGE_CUDA_LOG, layers path):"
    note ""
    sort -u "$logs/cudnn-algorithms.log" | head -24 | while IFS= read -r l; do note "    $l"; done
  fi

  # PyTorch on the very same job and card (same weights, same Philox noise start images, Adam lr 0.1, 20 steps,
  # no early stop), eager at two batch sizes and compiled at one (each compiled batch size costs a compilation).
  local py=""
  command -v python3 >/dev/null 2>&1 && python3 -c 'import torch, numpy' >/dev/null 2>&1 && py=python3
  if [ -z "$py" ]; then
    note ""
    note "**PyTorch peer**: not run (no python3 with torch and numpy)"
    return $ok
  fi
  local mode nudge_rate peer_rate
  nudge_rate=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["image_steps_per_s"])' \
    "$work/optimize-fused/summary.json" 2>/dev/null || echo "")
  for mode in eager compile; do
    if [ "$mode" = eager ]; then
      timeout -k 5 18 "$py" "$root/tools/bench/pytorch_peer.py" optimize --device cuda --n 65536 --steps 20 \
        --batch 16384,65536 >"$logs/peer-$mode.log" 2>&1
    else
      timeout -k 5 35 "$py" "$root/tools/bench/pytorch_peer.py" optimize --device cuda --compile --n 65536 --steps 20 \
        --batch 65536 >"$logs/peer-$mode.log" 2>&1
    fi
    rc=$?
    peer_rate=$(tail -1 "$logs/peer-$mode.log" | "$py" -c 'import json,sys; print(json.loads(sys.stdin.read())["best_image_steps_per_s"])' 2>/dev/null || echo "")
    note ""
    if [ -n "$peer_rate" ] && [ -n "$nudge_rate" ]; then
      note "**PyTorch $($py -c 'import torch; print(torch.__version__)') $mode**, same job: best $(printf '%.0f' "$peer_rate") image-steps/s; nudge (fused, end to end) $(printf '%.0f' "$nudge_rate"): **$($py -c "print(f'{$nudge_rate / $peer_rate:.2f}')")x**"
    else
      note "**PyTorch $mode**: no figure (exit $rc: $(tail -1 "$logs/peer-$mode.log" | cut -c1-200))"
    fi
  done
  return $ok
}

# Nsight Compute on the optimize path, clocks as the card runs them (--clock-control none, as the benchmarks see
# them): Speed Of Light and occupancy per kernel, per path.
stage_profile() {
  note ""
  if ! command -v ncu >/dev/null 2>&1; then
    note "**Profile**: not run (no ncu on PATH)"
    return 1
  fi
  local model="$root/data/models/mnist_cnn.safetensors" path rc filter secs ok=0
  for path in fused layers; do
    # 16,384 entries (target all: one row per image) fill the card. Fused: three of its launches after the first. Layers: past the first step
    # (algorithm choice), thirty kernels, about two steps.
    if [ "$path" = fused ]; then
      filter=(--kernel-name regex:fused --launch-skip 1 --launch-count 3)
      secs=18
    else
      filter=(--launch-skip 40 --launch-count 30)
      secs=22
    fi
    timeout -k 5 "$secs" ncu --clock-control none --target-processes all --section SpeedOfLight --section Occupancy \
      "${filter[@]}" --csv --page details "$build/nudge" optimize --model "$model" --device cuda --path "$path" \
      --init noise --count 16384 --target all --steps 4 --out "$work/profile-$path" --quiet >"$logs/ncu-$path.csv" 2>&1
    rc=$?
    note "**Profile, --path $path** (\`ncu --clock-control none --section SpeedOfLight --section Occupancy\`, 16,384 entries, bound ${secs} s; exit $rc):"
    note ""
    python3 "$root/tools/ncu_summary.py" "$logs/ncu-$path.csv" >"$work/ncu-$path.md" 2>&1 ||
      note "    (no summary: $(tail -1 "$work/ncu-$path.md"); raw output in the logs tarball, ncu-$path.csv)"
    while IFS= read -r l; do note "$l"; done <"$work/ncu-$path.md"
    note ""
    [ "$rc" -eq 0 ] || ok=1
  done
  return $ok
}

# Runs one stage in a child process under its box (timeout signals the child's whole process group).
run_stage() {
  local s=$1 deadline=$2 t0 left b rc
  t0=$(now)
  left=$((deadline - t0 - box[wrapup]))
  b=${box[$s]}
  [ "$left" -lt "$b" ] && b=$left
  if [ "$b" -lt 5 ]; then
    note ""
    note "_stage $s: not run, the ${budget} s budget is spent_"
    echo "$s	not run	0	${box[$s]}" >>"$work/stages.tsv"
    return 1
  fi
  say "stage $s (box ${b} s)"
  GPU_CHECK_STAGE_BOX=$b timeout -k 5 "$b" bash "$self" --stage "$s"
  rc=$?
  local used=$(($(now) - t0))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note ""
    note "_stage $s: stopped at its ${b} s box_"
  fi
  echo "$s	$rc	$used	$b" >>"$work/stages.tsv"
  snapshot_logs
  return "$rc"
}

run_checks() {
  local stages=("$@") t0 deadline
  t0=$(now)
  deadline=$((t0 + budget))
  [ ${#stages[@]} -gt 0 ] || stages=("${all_stages[@]}")
  local s
  for s in "${stages[@]}"; do
    [[ " ${all_stages[*]} " == *" $s "* ]] || die "unknown stage '$s' (${all_stages[*]})"
  done
  export NUDGE_REQUIRE_GPU="${GPU_CHECK_REQUIRE_GPU:-1}" NUDGE_PRINT_ERRORS=1
  rm -rf "$logs" "$work/stages.tsv"
  mkdir -p "$outdir" "$logs" || die "cannot make $outdir"
  rm -f "$outdir/gpu-report.md" "$outdir/gpu-logs.tar.gz" "$outdir/gpu-logs.tar.gz.part"
  : >"$report"
  note "### $(date -u '+%F %H:%M UTC') — tools/gpu_check.sh ${stages[*]}"
  note ""
  timeout -k 5 "${box[setup]}" bash "$self" --setup
  local rc=$?
  [ "$rc" -eq 0 ] || die "setup failed (exit $rc): no usable bundle"
  find_cuda_libs
  echo "setup	0	$(($(now) - t0))	${box[setup]}" >"$work/stages.tsv"
  note "| | |"
  note "| --- | --- |"
  local failed=()
  for s in "${stages[@]}"; do
    run_stage "$s" "$deadline" || failed+=("$s")
  done
  note ""
  note "Stage times (box from the budget in docs/gpu-runs.md; the whole at most ${budget} s):"
  note ""
  note "| stage | exit | used (s) | box (s) |"
  note "| --- | --- | --- | --- |"
  while IFS=$'\t' read -r name code used b; do note "| $name | $code | $used | $b |"; done <"$work/stages.tsv"
  note ""
  note "Total: $(($(now) - t0)) s."
  if [ ${#failed[@]} -eq 0 ]; then
    note "**Result: every stage passed.**"
  else
    note "**Result: FAILED stages: ${failed[*]}.**"
    if [ -s "$work/skip-failures.txt" ]; then
      note ""
      note "GPU tests that could not run (their skip is a failure with NUDGE_REQUIRE_GPU=1): $(tr '\n' ' ' <"$work/skip-failures.txt")"
    fi
  fi
  snapshot_logs
  echo
  echo "----- gpu-report.md (paste into docs/gpu-runs.md) -----"
  cat "$report"
  [ ${#failed[@]} -eq 0 ]
}

# ---------------------------------------------------------------------------------------------------------------------
# --rehearse: the GPU half here, from a copy, as the card would run it
# ---------------------------------------------------------------------------------------------------------------------

rehearse() {
  [ -f "$tarball" ] || die "no $tarball: run tools/gpu_check.sh --pack first"
  local dir
  dir=$(mktemp -d /tmp/nudge-rehearse.XXXXXX) || die "mktemp failed"
  mkdir -p "$dir/repo/build-gpu" "$dir/out"
  # What a device call carries: tracked and untracked-not-ignored files, plus the carried bundle.
  (cd "$root" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$dir/repo" ||
    die "could not copy the tree"
  cp "$tarball" "$dir/repo/build-gpu/"
  say "rehearsal in $dir/repo (OUT=$dir/out), NUDGE_REQUIRE_GPU=${GPU_CHECK_REQUIRE_GPU:-1}"
  local t0 rc files
  t0=$(now)
  # Two test jobs: this machine has two cores (the card's default is 8 of 16).
  (cd "$dir/repo" && env -u LD_LIBRARY_PATH OUT="$dir/out" GPU_CHECK_WORK="$dir/work" \
    GPU_CHECK_TEST_JOBS="${GPU_CHECK_TEST_JOBS:-2}" bash tools/gpu_check.sh "$@")
  rc=$?
  files=$(find "$dir/out" -type f | wc -l)
  echo
  echo "----- rehearsal -----"
  echo "wall: $(($(now) - t0)) s (budget ${budget} s); exit status: $rc"
  echo "files under OUT: $files (a device call returns at most 8):"
  find "$dir/out" -type f -printf '  %P  %s bytes\n'
  echo "logs tarball:"
  tar tzf "$dir/out/gpu-logs.tar.gz" 2>/dev/null | sed 's/^/  /'
  echo "embedded path: $alias_root -> $(readlink "$alias_root") (during the rehearsal; now back to $root)"
  ln -sfn "$root" "$alias_root"  # later builds here go through the alias too
  [ "$files" -le 8 ] || {
    echo "rehearsal: FAIL: more than 8 files under OUT"
    return 2
  }
  [ -s "$dir/out/gpu-report.md" ] || {
    echo "rehearsal: FAIL: no report"
    return 2
  }
  return "$rc"
}

case "${1:-}" in
  --pack) pack ;;
  --rehearse)
    shift
    rehearse "$@"
    ;;
  --setup)  # internal: run_checks' first step, in its own box
    mkdir -p "$build" && restore_tree
    ;;
  --stage)  # internal: one stage, in a child process so that its box can stop everything it started
    "stage_$2"
    ;;
  -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d' ;;
  *) run_checks "$@" ;;
esac
