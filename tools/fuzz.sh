#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, clang with ASan+UBSan) in build-fuzz/ and runs each for a bounded time.
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 10 s each, every target
#   FUZZ_RUNS=10000000 tools/fuzz.sh 3600 png           stop a target at 10 million executions or the time, first
#   FUZZ_TIMEOUT=10 ...                                 per-input limit in seconds (default 1); libFuzzer measures wall
#                                                       time, so a starved nice -n 19 run on a busy machine needs more
# Each target starts from its committed seeds (tests/fuzz/corpus/NAME, never modified) plus what earlier runs found
# (build-fuzz/corpus/NAME). A crash, leak, sanitizer report or an input slower than 1 s fails the run; the input is
# kept in build-fuzz/artifacts/ and its name printed. The last line per target gives its execution count.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
runs=${FUZZ_RUNS:--1}
timeout=${FUZZ_TIMEOUT:-1}
shift || true
build=${FUZZ_BUILD:-build-fuzz}  # FUZZ_BUILD=dir builds and runs elsewhere
command -v clang++ >/dev/null || { echo "fuzz.sh: needs clang++ (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNUDGE_CUDA=OFF \
  -DNUDGE_FUZZ=ON -DNUDGE_TESTS=OFF -DNUDGE_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); targets+=("${n#fuzz_}"); done
fi
mkdir -p "$build/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t"
  log="$build/fuzz_$t.log"
  if "$build/tests/fuzz/fuzz_$t" "$build/corpus/$t" "tests/fuzz/corpus/$t" -max_total_time="$seconds" -runs="$runs" -timeout="$timeout" \
       -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")
    slowest=$(sed -n 's/^stat::slowest_unit_time_sec: *//p' "$log")
    echo "fuzz $t: ok, $execs executions in ${secs:-$seconds}s (slowest input ${slowest}s)"
  else
    echo "fuzz $t: FAILED (see $log; inputs in $build/artifacts/)"
    grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5
    status=1
  fi
done
exit $status
