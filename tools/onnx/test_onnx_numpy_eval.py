#!/usr/bin/env python3
"""Self-test of onnx_numpy_eval.py against PyTorch on the attribute variants the fixtures do
not all cover (dilation, group, asymmetric and non-square padding, ceil_mode, AveragePool
padding with and without count_include_pad, Softmax).

Why: the evaluator is the independent check on nudge's ONNX import and export, so its own
reading of each attribute (pads order, ceil_mode's last-window rule, divisors) must be right.

  nice -n 10 /usr/bin/python3 tools/onnx/test_onnx_numpy_eval.py     # prints one line per case, exit 1 on a mismatch
"""

import io
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_numpy_eval  # noqa: E402

CASES = {
    "dilation_group_asym_pads": lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), groups=2), nn.ReLU(),  # pads [1,0,1,0]
        nn.Flatten(), nn.Linear(6 * 14 * 27, 10)),
    "maxpool_ceil_pad": lambda: nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(),                                       # 26
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),                # 14 (floor: 13)
        nn.MaxPool2d(2, stride=2, ceil_mode=True),                           # 7
        nn.MaxPool2d(2, stride=2, ceil_mode=True),                           # 4 (floor: 3)
        nn.Flatten(), nn.Linear(3 * 4 * 4, 10), nn.Softmax(dim=1)),
    "avgpool_pad_exclude": lambda: nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),       # 26 -> 13
        nn.Flatten(), nn.Linear(3 * 13 * 13, 10)),
    "avgpool_pad_include_ceil": lambda: nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),                # Pad + AveragePool, 26 -> 14
        nn.AvgPool2d(3, stride=2, ceil_mode=True, count_include_pad=False),  # 14 -> 7 (floor: 6)
        nn.Flatten(), nn.Linear(3 * 7 * 7, 10), nn.LogSoftmax(dim=1)),
}


def main():
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(5, 1, 28, 28)).astype(np.float32)
    bad = 0
    for i, (name, build) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = build().eval()
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        buf = io.BytesIO()
        torch.onnx.export(model, torch.zeros(2, 1, 28, 28), buf, opset_version=13, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        m = onnx.load_from_string(buf.getvalue())
        onnx.checker.check_model(m)
        got = onnx_numpy_eval.evaluate(m, x, strip_softmax=False)
        mabs, _ = onnx_numpy_eval.diff(got, ref)
        ok = got.shape == ref.shape and mabs < 1e-5
        bad += not ok
        print("%-26s %s max abs diff %.2g  ops %s" % (name, "ok  " if ok else "FAIL", mabs,
                                                     ",".join(sorted({n.op_type for n in m.graph.node}))))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
