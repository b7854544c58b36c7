#!/usr/bin/env bash
# One process against N MPI ranks on the same job, side by side (alternating, REPEATS times each), on this machine's
# CPU or GPUs: wall time of the whole command (start-up, the ranks' parts, rank 0's final write), the median of each,
# and a check that both folders are byte-identical.
#   tools/bench/mpi_speed.sh [RANKS=2] [REPEATS=3]        uses build/nudge (tools/build.sh); NUDGE=path overrides
set -uo pipefail
cd "$(dirname "$0")/../.."
ranks=${1:-2}
repeats=${2:-3}
nudge=${NUDGE:-build/nudge}
[ -x "$nudge" ] || { echo "mpi_speed: no $nudge (run tools/build.sh)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "mpi_speed: no mpirun (tools/install_deps.sh installs Open MPI)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
jobs=(
  "optimize --init noise --count 20000 --target all --steps 20 --quiet"
  "robustness --model data/models/mnist_cnn_robust.safetensors --count 1000 --eps 0.3 --attacks apgd-ce,apgd-t --apgd-iters 20 --targets 3 --chunk 50 --quiet"
)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'; }
echo "mpi_speed: $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $ranks ranks vs 1 process, $repeats runs each"
for job in "${jobs[@]}"; do
  one=() many=()
  for ((i = 0; i < repeats; i++)); do
    rm -rf "$work/one" "$work/many"
    one+=("$(seconds "$nudge" $job --out "$work/one")")
    many+=("$(seconds mpirun --oversubscribe -np "$ranks" "$nudge" $job --out "$work/many")")
  done
  same=yes
  for f in results.csv images.npy summary.json; do cmp -s "$work/one/$f" "$work/many/$f" || same=no; done
  m1=$(printf '%s\n' "${one[@]}" | median)
  mn=$(printf '%s\n' "${many[@]}" | median)
  printf '%-10s 1 process %6.2fs   %d ranks %6.2fs   speed-up %.2fx   byte-identical: %s\n' "${job%% *}" "$m1" "$ranks" \
    "$mn" "$(awk -v a="$m1" -v b="$mn" 'BEGIN {print a / b}')" "$same"
done
