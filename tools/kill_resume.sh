#!/usr/bin/env bash
# The acceptance run of issue 14: one optimize job, SIGKILLed at random moments and resumed after each kill, must end
# byte-identical to an uninterrupted run of the same job. Usage: tools/kill_resume.sh [KILLS] [COUNT] [NUDGE]
# Prints one line per kill (when it landed, rows in the journal) and the comparison; exits 1 on any difference.
set -uo pipefail
cd "$(dirname "$0")/.."
kills=${1:-20}
count=${2:-20000}
nudge=${3:-build/nudge}
work=$(mktemp -d)
# Kept when the comparison fails, for a look at the folders and the kills' stderr (err.txt).
trap 'if [ "${status:-1}" = 0 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi' EXIT
job=(optimize --model data/models/mnist_cnn.safetensors --init noise --count "$count" --target all --steps 20
     --chunk 500 --quiet)
start=$(date +%s.%N)
"$nudge" "${job[@]}" --out "$work/whole" >/dev/null || { echo "the uninterrupted run failed"; exit 1; }
whole_s=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted: ${whole_s}s"
RANDOM=20261202
for i in $(seq 1 "$kills"); do
  "$nudge" "${job[@]}" --out "$work/killed" --resume >/dev/null 2>>"$work/err.txt" &
  pid=$!
  # Uniform in [0.3 s, 0.3 s + an eighth of the uninterrupted run]: at start-up, during a resume's replay, inside
  # and between journal blocks; twenty of them span about the whole job.
  r=$((RANDOM % 100))
  delay=$(echo "scale=2; 0.3 + $r * $whole_s / 800" | bc)
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null && state=killed || state=finished
  wait "$pid" 2>/dev/null || true
  journal=$(stat -c %s "$work"/killed/.nudge-journal/*.nudge 2>/dev/null || true)
  echo "kill $i after ${delay}s: $state; journal ${journal:-none} bytes"
done
"$nudge" "${job[@]}" --out "$work/killed" --resume >/dev/null || echo "the final resume failed"
status=0
for f in results.csv images.npy grid.png summary.json; do
  if cmp -s "$work/whole/$f" "$work/killed/$f"; then echo "identical: $f"; else echo "DIFFERS: $f"; status=1; fi
done
rows=$(($(wc -l < "$work/killed/results.csv") - 1))
echo "rows in results.csv: $rows of $count"
[ "$rows" -eq "$count" ] || status=1
exit $status
