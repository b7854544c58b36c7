#!/usr/bin/env bash
# One command on a fresh Debian/Ubuntu machine: installs the dependencies, fetches MNIST, builds, checks the
# committed reference model, then runs nudge's main job: batched input optimization (the reference notebook's
# three experiments, in batch) on the GPU when there is one, else on the CPU, and a robustness evaluation of the
# committed robust model. Results land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh
data/fetch_mnist.sh
tools/build.sh
nudge=build/nudge
model=data/models/mnist_cnn.safetensors
echo "== reference model on the 10,000 test images"
$nudge eval --model "$model"
echo "== 10,000 noise images -> each class in turn, Adam lr 0.1, stop at 99%"
$nudge optimize --model "$model" --init noise --count 10000 --target all --steps 50 --stop-at 0.99 --out out/noise_to_class
echo "== test image 307 (a 7) -> '2'"
$nudge optimize --model "$model" --init test --indices 307 --target 2 --steps 10 --out out/image307_to_2
echo "== test image 61 (an 8) -> 50% '2' / 50% '3'"
$nudge optimize --model "$model" --init test --indices 61 --target-dist 0,0,0.5,0.5,0,0,0,0,0,0 --steps 300 --out out/image61
echo "== 1,000 noise images -> 50% '2' / 50% '3'"
$nudge optimize --model "$model" --init noise --count 1000 --target-dist 0,0,0.5,0.5,0,0,0,0,0,0 --steps 300 \
  --stop-kl 2e-4 --out out/noise_half
echo "== the first 1,000 test images -> the next class, PGD eps 0.3 (L-inf)"
$nudge optimize --model "$model" --init test --range 0:1000 --target next --optimizer sign --lr 0.01 --steps 100 \
  --eps 0.3 --norm linf --out out/pgd
echo "== robust model: robust accuracy of the first 200 test images at eps 0.1, 0.2, 0.3 (APGD-CE, APGD-T)"
$nudge robustness --model data/models/mnist_cnn_robust.safetensors --count 200 --eps 0.1,0.2,0.3 \
  --attacks apgd-ce,apgd-t --out out/robustness
echo "== done: see out/*/grid.png, out/robustness/robustness.png, results.csv and summary.json"
