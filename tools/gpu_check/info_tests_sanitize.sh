# shellcheck shell=bash disable=SC2154  # the globals come from tools/gpu_check.sh
# The GPU half's first stages (tools/gpu_check.sh, which runs each in a child under its box and sets the paths,
# boxes and note): info (card, driver, runtime versions), tests (ctest, CUDA suites first, counts per group) and
# sanitize (compute-sanitizer memcheck and racecheck on small shapes).

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
  # The two ctest bounds share the stage's box in the budget's proportions (cuda_tests_box + other_tests_box of its box), so that when the box is
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

# compute-sanitizer with one tool on one or more binaries in turn (one process each, the same gtest filter), all
# under one bound of `secs` seconds: each binary gets what the ones before it left. One report line for the lot:
# their summaries (each different one once), their gtest counts summed, the first non-zero exit.
sanitize_one() {
  local tool=$1 secs=$2 filter=$3 extra=$4 log="$work/sanitize-run.tmp"
  shift 4
  local deadline rc=0 r left bin names="" summary="" s
  deadline=$(($(now) + secs))
  : >"$log.all"
  for bin in "$@"; do
    names="${names:+$names, }$(basename "$bin")"
    left=$((deadline - $(now)))
    if [ "$left" -ge 1 ]; then
      # shellcheck disable=SC2086  # $extra is zero or more options
      timeout -k 5 "$left" compute-sanitizer --tool "$tool" --error-exitcode 99 $extra "$bin" --gtest_filter="$filter" >"$log" 2>&1
      r=$?
    else
      echo "not run: the bound of ${secs} s was spent" >"$log"
      r=124
    fi
    { echo "===== compute-sanitizer --tool $tool $(basename "$bin") --gtest_filter=$filter (exit $r)"; cat "$log"; } >>"$logs/sanitize.log"
    s=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^========= //')
    if [ -n "$s" ] && [[ "; $summary; " != *"; $s; "* ]]; then summary="${summary:+$summary; }$s"; fi
    cat "$log" >>"$log.all"
    [ "$rc" -ne 0 ] || rc=$r
  done
  local tests
  tests=$(grep -Eo '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+' "$log.all" | sed -E 's/^\[  ([A-Z]+) +\] ([0-9]+)/\2 \L\1/' |
    awk '!($2 in n) { order[++k] = $2 } { n[$2] += $1 } END { for (i = 1; i <= k; ++i) printf "%s%d %s", (i > 1 ? ", " : ""), n[order[i]], order[i] }')
  note "| $tool | $names \`$filter\` | ${secs} s | ${summary:-no summary$([ $rc -eq 124 ] && echo ': stopped at its bound')} | ${tests:-?} | $rc |"
  rm -f "$log" "$log.all"
  [ "$rc" -eq 0 ]
}

stage_sanitize() {
  note ""
  command -v compute-sanitizer >/dev/null || {
    note "**compute-sanitizer**: not on PATH"
    return 1
  }
  note "**compute-sanitizer** (each line's runs under one bound, one process per binary; small shapes):"
  note ""
  note "| tool | binaries, tests | bound | summary | gtest | exit |"
  note "| --- | --- | --- | --- | --- | --- |"
  local t="$build/tests" ok=0
  local kernels=("$t/test_cuda_kernels_layers" "$t/test_cuda_kernels_loss" "$t/test_cuda_kernels_optimize")
  local fused="$t/test_cuda_fused_device" parity=("$t/test_cuda_parity_backend" "$t/test_cuda_parity_optimize")
  local layers="$t/test_cuda_parity_layers"
  : >"$logs/sanitize.log"
  sanitize_one memcheck 18 'Cuda*' '' "${kernels[@]}" || ok=1
  sanitize_one memcheck 13 'FusedKernel.*:FusedChunk.SizesThatDoNotDivideTheTileMatchCpu' '' "$fused" || ok=1
  sanitize_one memcheck 13 'CudaBackendParity.Predict:BothPaths/CudaOptimizeParity.ChunkWithoutEarlyStop/*' '' "${parity[@]}" || ok=1
  # The layer path on the windowed architectures: CudaNetwork's own activation and index buffers have no sentinels,
  # so a size that disagreed with a kernel's Ho x Wo would show only here.
  sanitize_one memcheck 10 'CudaArchitectures/CudaLayerPathParity.NetworkForwardBackward/*' '' "$layers" || ok=1
  # racecheck is slow on shared-memory-heavy kernels: the fused kernel on 37 entries for 3 steps (every phase,
  # tiles of 8 with a partial last tile), and the smem kernels of the layer path on their test shapes.
  sanitize_one racecheck 28 'FusedKernel.WritesEveryResultNothingPastTheEndAndLeavesStoppedEntriesAlone' '--racecheck-report analysis' "$fused" || ok=1
  sanitize_one racecheck 14 'CudaKernels.BiasGrad:CudaKernels.CompactActive:CudaKernels.InputStep:CudaLossKernels.*' '--racecheck-report analysis' "${kernels[@]}" || ok=1
  # APGD's row phases share their partial sums through shared memory, one barrier apart.
  sanitize_one racecheck 8 'CudaApgdKernels.*' '--racecheck-report analysis' "$t/test_cuda_kernels_apgd" || ok=1
  # Square's proposal ORs its lanes' "changed a pixel" flags in shared memory.
  sanitize_one racecheck 8 'CudaSquareKernels.*' '--racecheck-report analysis' "$t/test_cuda_kernels_square" || ok=1
  # FAB-T's update sorts and scans each row's pairs in dynamic shared memory, one barrier per bitonic stage: every
  # kernel under memcheck (an offset of the scratch layout past its end shows only there), racecheck without the
  # 3,072-pixel rows, whose 78-stage sorts are the slowest to track.
  sanitize_one memcheck 10 'CudaFabKernels.*' '' "$t/test_cuda_kernels_fab" || ok=1
  sanitize_one racecheck 8 'CudaFabKernels.*-CudaFabKernels.UpdateIsTheHostRowsWithScratchBeyond48KiB' '--racecheck-report analysis' "$t/test_cuda_kernels_fab" || ok=1
  return $ok
}
