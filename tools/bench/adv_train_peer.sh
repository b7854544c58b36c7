#!/usr/bin/env bash
# Adversarial training speed, nudge next to PyTorch on the same recipe and machine, one run: for each method
# (pgd, fgsm, trades) `nudge train --adversarial M` and `tools/bench/pytorch_peer.py adv-train --method M` train the
# reference CNN from scratch on the first LIMIT training images for EPOCHS epochs (batch 100, eps 0.3, cyclic Adam to
# 5e-3, 10 attack steps of 0.04 for pgd and trades), alternating so that the machine's load hits both alike. Each
# side's time is its training loop only (nudge: the epochs' seconds in the JSON log, without the held-out check;
# PyTorch: train_seconds). Prints a markdown table for docs/benchmarks.md.
#   LIMIT (default 5000), EPOCHS (1), METHODS ("pgd fgsm trades"), THREADS (2), BUILD_DIR (build), PYTHON.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
build=${BUILD_DIR:-build}
limit=${LIMIT:-5000}
epochs=${EPOCHS:-1}
methods=${METHODS:-pgd fgsm trades}
threads=${THREADS:-2}
python=${PYTHON:-}
if [[ -z "$python" ]]; then
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch, numpy' >/dev/null 2>&1; then python=$p; break; fi
  done
fi
[[ -n "$python" ]] || { echo "adv_train_peer.sh: no Python with torch and numpy (Debian: apt-get install python3-torch)" >&2; exit 2; }
[[ -x "$build/nudge" ]] || { echo "adv_train_peer.sh: $build/nudge not built (tools/build.sh)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rows=()
for m in $methods; do
  extra=(--adv-steps 10 --adv-lr 0.04)
  [[ $m == fgsm ]] && extra=()
  OMP_NUM_THREADS=$threads "$build/nudge" train --device cpu --adversarial "$m" --eps 0.3 "${extra[@]}" --batch 100 \
    --epochs "$epochs" --limit "$limit" --lr 5e-3 --lr-schedule cyclic --check-count 100 --out "$work/$m.safetensors" \
    > "$work/$m.nudge.txt" 2>&1
  peer_extra=(--adv-steps 10 --adv-lr 0.04)
  [[ $m == fgsm ]] && peer_extra=()
  "$python" tools/bench/pytorch_peer.py adv-train --method "$m" --eps 0.3 "${peer_extra[@]}" --train-batch 100 \
    --epochs "$epochs" --limit "$limit" --lr 5e-3 --lr-schedule cyclic --threads "$threads" > "$work/$m.torch.txt" 2>&1
  row=$("$python" - "$work/$m.train.json" "$work/$m.torch.txt" "$m" "$limit" "$epochs" <<'PY'
import json, sys
log = json.load(open(sys.argv[1]))
peer = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
ns = sum(e["seconds"] for e in log["epochs"])
ts = peer["train_seconds"]
n = int(sys.argv[4]) * int(sys.argv[5])
print(f"| {sys.argv[3]} | {ns:.1f} s ({n / ns:.0f} img/s) | {ts:.1f} s ({n / ts:.0f} img/s) | **{ts / ns:.2f}x** | "
      f"{100 * log['test_accuracy']:.2f}% / {100 * peer['test_accuracy']:.2f}% |")
PY
)
  rows+=("$row")
  echo "$row" >&2
done
echo
echo "$(date -u +%F), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $limit images x $epochs epoch(s), batch 100, eps 0.3, $threads threads each; torch $("$python" -c 'import torch; print(torch.__version__)')"
echo
echo "| method | nudge | PyTorch | nudge speed-up | test accuracy nudge / PyTorch |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
