#!/usr/bin/env bash
# CPU benchmark of nudge next to PyTorch, ending in a markdown block for docs/benchmarks.md.
#   1. builds bench_cpu if needed (BUILD_DIR, default build/; configured Release if absent)
#   2. runs it: console table here, JSON into $OUT_DIR/bench_cpu.json
#   3. runs the PyTorch peer on the same optimize job (default N=8192, 20 steps, 2 threads; JSON in $OUT_DIR/pytorch_peer.json)
#   4. prints nudge's optimize speed over PyTorch's best batch size, with the machine and the command lines.
# PEER_N, PEER_STEPS, PEER_THREADS, PEER_BATCH override the peer's job (a full sweep takes minutes on 2 cores).
# PYTHON picks the interpreter (default: the first of python3, /usr/bin/python3 that imports torch and numpy).
# Other processes on the machine skew both sides; run it on a quiet machine for figures worth keeping.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
build=${BUILD_DIR:-build}
out=${OUT_DIR:-$build/bench-results}
# The PyTorch job; the defaults are the documented comparison, the overrides are for quick checks.
peer_n=${PEER_N:-8192}
peer_steps=${PEER_STEPS:-20}
peer_threads=${PEER_THREADS:-2}
peer_batch=${PEER_BATCH:-256,1024,4096}

find_python() {
  local candidates=("${PYTHON:-}" python3 /usr/bin/python3) p
  for p in "${candidates[@]}"; do
    [[ -n "$p" ]] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch, numpy' >/dev/null 2>&1; then
      echo "$p"
      return 0
    fi
  done
  echo "run_cpu_bench.sh: no Python with torch and numpy found; set PYTHON=/path/to/python3" >&2
  return 1
}
python=$(find_python)

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build" -j"$(nproc)" --target bench_cpu
mkdir -p "$out"

bench_cmd=("$build/tools/bench/bench_cpu" --benchmark_format=console "--benchmark_out=$out/bench_cpu.json"
           --benchmark_out_format=json)
peer_cmd=("$python" tools/bench/pytorch_peer.py optimize --n "$peer_n" --steps "$peer_steps" --threads "$peer_threads"
          --batch "$peer_batch")

load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
echo "== ${bench_cmd[*]}"
"${bench_cmd[@]}"
echo
echo "== ${peer_cmd[*]}"
"${peer_cmd[@]}" | tee "$out/pytorch_peer.log"
tail -n 1 "$out/pytorch_peer.log" > "$out/pytorch_peer.json"

cpu_model=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
echo
"$python" - "$out/bench_cpu.json" "$out/pytorch_peer.json" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" \
  "${cpu_model:-unknown}" "${bench_cmd[*]}" "${peer_cmd[*]}" "$load" <<'EOF'
import json
import sys

bench_path, peer_path, date, nproc, cpu, bench_cmd, peer_cmd, load = sys.argv[1:]
bench = json.load(open(bench_path))
peer = json.loads(open(peer_path).read())


def find(prefix):
    for b in bench["benchmarks"]:
        if b["name"].startswith(prefix) and b.get("run_type", "iteration") == "iteration":
            return b
    sys.exit(f"run_cpu_bench.sh: no benchmark {prefix}* in {bench_path}")


train = find("BM_train_step/32/")
grad = find("BM_input_gradient/1024/")
opt1k = find("BM_optimize/1024/")
opt8k = find("BM_optimize/8192/")
ratio = opt8k["items_per_second"] / peer["best_image_steps_per_s"]
sweep = ", ".join(f"batch {r['batch']}: {r['image_steps_per_s']:,.0f}" for r in peer["sweep"])

print(f"### CPU, {date}")
print()
print(f"{cpu}, nproc {nproc}. nudge: {opt8k.get('label', '?')}; PyTorch {peer['torch']} ({peer['device']}).")
print()
print("```")
print(bench_cmd)
print(peer_cmd)
print("```")
print()
print("| job | nudge | PyTorch |")
print("|---|---|---|")
print(f"| train_step, batch 32 | {train['items_per_second']:,.0f} images/s | |")
print(f"| input_gradient, batch 1024 | {grad['items_per_second']:,.0f} images/s | |")
print(f"| optimize, N=1024, Adam lr 0.1 | {opt1k['items_per_second']:,.0f} image-steps/s | |")
peer_job = f"N={peer['n']}, {peer['steps']} steps"
print(f"| optimize, N=8192, Adam lr 0.1 (PyTorch: {peer_job}) | {opt8k['items_per_second']:,.0f} image-steps/s | "
      f"{peer['best_image_steps_per_s']:,.0f} image-steps/s (best of {sweep}) |")
print()
print(f"nudge / PyTorch, optimize: **{ratio:.2f}x** (load average before the run: {load})")
EOF
