# shellcheck shell=bash disable=SC2154  # the globals come from tools/gpu_check.sh
# The GPU half's last stages (tools/gpu_check.sh, which runs each in a child under its box and sets the paths,
# boxes and note): train (one epoch on MNIST), bench (benchmarks, nudge optimize end to end, the PyTorch peer)
# and profile (ncu on both optimize paths).

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
  # The standard cascade on the card (begin_apgd, begin_fab, begin_square: no host round trip per iteration in any
  # of its four stages) on the robust model's first 1,000 test points; the CPU figures for the same points are in
  # docs/robustness.md.
  local robust="$root/data/models/mnist_cnn_robust.safetensors"
  timeout -k 5 20 "$build/nudge" robustness --model "$robust" --device cuda --range 0:1000 --eps 0.3 \
    --attacks standard --quiet --out "$work/robustness-apgd" >"$logs/robustness-apgd.log" 2>&1
  rc=$?
  note ""
  note "**nudge robustness** (\`--range 0:1000 --eps 0.3 --attacks standard\`, robust model, bound 20 s): exit $rc; $(tail -2 "$logs/robustness-apgd.log" | tr '\n' ' ')"
  [ -f "$work/robustness-apgd/run.json" ] && note "stage seconds: $(python3 -c 'import json,sys; print(", ".join("%s %.2f" % (s["attack"], s["seconds"]) for s in json.load(open(sys.argv[1]))["stages"]))' "$work/robustness-apgd/run.json" 2>&1)"
  [ "$rc" -eq 0 ] || ok=1
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
    "$work/optimize-fused/run.json" 2>/dev/null || echo "")
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
