#!/usr/bin/env python3
"""Checks nudge's ONNX export with tools that are not nudge's: onnx.checker (full check, with shape inference) and
the NumPy evaluator (onnx_numpy_eval.py), against PyTorch's logits.

For each PyTorch fixture in tests/data/onnx, nudge imports NAME.onnx and exports it again (nudge export --onnx);
the export must pass onnx.checker and, run by the NumPy evaluator on NAME.inputs.bin, give PyTorch's logits
(NAME.logits.bin) to 1e-4. Every committed nudge model (data/models/*.safetensors) is exported and checked by
onnx.checker, and its logits by the evaluator against nudge's own on the same images (nudge predict --json is not
needed: the evaluator's argmax is compared with `nudge eval`'s accuracy on the first 200 test images).

    /usr/bin/python3 tools/onnx/check_nudge_export.py [--nudge build/nudge]

Needs python3-onnx and numpy (Debian 12), not PyTorch. Exit 0 when every check passes.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_numpy_eval import evaluate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def export(nudge, src, dst):
    subprocess.run([nudge, "export", "--model", src, "--onnx", dst], check=True, stdout=subprocess.DEVNULL)


def mnist_test(n):
    with open(os.path.join(ROOT, "data/mnist/t10k-images-idx3-ubyte"), "rb") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: n * 784]
    with open(os.path.join(ROOT, "data/mnist/t10k-labels-idx1-ubyte"), "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    return images.reshape(n, 1, 28, 28).astype(np.float32) / 255.0, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nudge", default=os.path.join(ROOT, "build/nudge"))
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for meta in sorted(glob.glob(os.path.join(ROOT, "tests/data/onnx/*.json"))):
            name = os.path.basename(meta)[:-5]
            out = os.path.join(tmp, name + ".onnx")
            export(args.nudge, os.path.join(ROOT, "tests/data/onnx", name + ".onnx"), out)
            onnx.checker.check_model(onnx.load(out), full_check=True)
            x = np.fromfile(os.path.join(ROOT, "tests/data/onnx", name + ".inputs.bin"), dtype="<f4")
            x = x.reshape(json.load(open(meta))["input_shape"])
            torch = np.fromfile(os.path.join(ROOT, "tests/data/onnx", name + ".logits.bin"), dtype="<f4")
            got = evaluate(out, x).reshape(-1)
            d = float(np.max(np.abs(got - torch)))
            ok = d <= 1e-4
            failures += not ok
            print(f"{name:28s} re-exported by nudge: onnx.checker ok, NumPy evaluator vs PyTorch max |diff| {d:.2e} "
                  f"{'ok' if ok else 'FAILED'}")
        if os.path.exists(os.path.join(ROOT, "data/mnist/t10k-images-idx3-ubyte")):
            x, labels = mnist_test(200)
            for src in sorted(glob.glob(os.path.join(ROOT, "data/models/*.safetensors"))):
                name = os.path.basename(src)
                out = os.path.join(tmp, name + ".onnx")
                export(args.nudge, src, out)
                onnx.checker.check_model(onnx.load(out), full_check=True)
                correct = int(np.sum(np.argmax(evaluate(out, x), axis=1) == labels))
                ev = subprocess.run([args.nudge, "eval", "--model", src, "--limit", "200", "--device", "cpu", "--json"],
                                    check=True, capture_output=True, text=True)
                nudge_correct = json.loads(ev.stdout)["correct"]
                ok = correct == nudge_correct
                failures += not ok
                print(f"{name:28s} exported: onnx.checker ok, NumPy evaluator {correct}/200 correct, nudge "
                      f"{nudge_correct}/200 {'ok' if ok else 'FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
