#!/usr/bin/env bash
# The open-set experiments of README ("A model that can say 'not a digit'"), on the plain reference model and the
# open-set model: digit accuracy, the classes given to non-digits per family (training families, a held-out noise
# family, Fashion-MNIST), and input optimization from noise toward each digit and from digits toward "not a digit",
# with the judge's agreement. Results in out/open/; the tables are printed.
#   tools/open_set_experiments.sh [NUDGE]       (default build/nudge; needs data/mnist and data/fashion-mnist:
#                                                data/fetch_mnist.sh and data/fetch_mnist.sh --fashion)
set -euo pipefail
cd "$(dirname "$0")/.."
nudge=${1:-build/nudge}
plain=data/models/mnist_cnn.safetensors
open=data/models/mnist_cnn_open.safetensors
judge=data/models/judge_mlp.safetensors
mkdir -p out/open
families=noise,uniform,gauss,constant,shuffled,patches,shapes,blocks,fashion
for m in "$plain" "$open"; do
  "$nudge" eval --model "$m" --device cpu | head -1
  "$nudge" eval --model "$m" --nondigits "$families" --count 10000 --device cpu
done
# From noise toward each digit: 1,000 images per model, target i mod 10 (the open-set model's job runs 1,100 images
# with target i mod 11, whose rows toward "not a digit" the report lists apart), Adam lr 0.1, stop at p >= 0.99.
"$nudge" optimize --model "$plain" --init noise --count 1000 --target all --steps 50 --stop-at 0.99 --judge "$judge" \
  --device cpu --quiet --out out/open/noise_plain
"$nudge" optimize --model "$open" --init noise --count 1100 --target all --steps 50 --stop-at 0.99 --judge "$judge" \
  --device cpu --quiet --out out/open/noise_open
# From the first 1,000 test digits toward "not a digit" (class 10).
"$nudge" optimize --model "$open" --init test --range 0:1000 --target 10 --steps 50 --stop-at 0.99 --device cpu \
  --quiet --out out/open/digits_to_none
python3 tools/open_set_report.py plain=out/open/noise_plain open-set=out/open/noise_open \
  open-set-from-digits=out/open/digits_to_none
