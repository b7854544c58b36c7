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

# Appends a line to the report at once (a killed call still returns what ran).
note() { printf '%s\n' "$*" >>"$report"; }
now() { date +%s; }

all_stages=(info tests sanitize train bench profile)
# The budget (seconds): docs/gpu-runs.md states each box with its reasoning; keep the two in step. setup and
# wrap-up are the unpacking before the stages and the final tarball after them.
declare -A box=([setup]=20 [info]=10 [tests]=122 [sanitize]=123 [train]=40 [bench]=120 [profile]=40 [wrapup]=5)
budget="${GPU_CHECK_BUDGET:-480}"
# Inside the tests stage: the CUDA suites, then the rest, each under its own bound; per-test timeout at pack time.
cuda_tests_box=72 other_tests_box=50 card_test_timeout=60
cuda_test_regex='^(Cuda|Fused|BothPaths/Cuda|OptimizeFixture)'
test_jobs="${GPU_CHECK_TEST_JOBS:-8}"  # ctest -j on the card's 16 cores (each test up to 2 OpenMP threads)

# The functions, by half, live in tools/gpu_check/ and are read from next to this script, so that it runs from any
# folder, and on the card from the working tree a device call carries (tracked and untracked-not-ignored files, so
# tools/gpu_check/ travels with this script; the bundle holds only build outputs and data).
parts="$root/tools/gpu_check"
# shellcheck source-path=SCRIPTDIR source=gpu_check/pack.sh
. "$parts/pack.sh" || die "cannot read $parts/pack.sh"
# shellcheck source-path=SCRIPTDIR source=gpu_check/setup.sh
. "$parts/setup.sh" || die "cannot read $parts/setup.sh"
# shellcheck source-path=SCRIPTDIR source=gpu_check/info_tests_sanitize.sh
. "$parts/info_tests_sanitize.sh" || die "cannot read $parts/info_tests_sanitize.sh"
# shellcheck source-path=SCRIPTDIR source=gpu_check/train_bench_profile.sh
. "$parts/train_bench_profile.sh" || die "cannot read $parts/train_bench_profile.sh"
# shellcheck source-path=SCRIPTDIR source=gpu_check/rehearse.sh
. "$parts/rehearse.sh" || die "cannot read $parts/rehearse.sh"

# ---------------------------------------------------------------------------------------------------------------------
# the GPU half: stages in their boxes, the report, the logs
# ---------------------------------------------------------------------------------------------------------------------

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
