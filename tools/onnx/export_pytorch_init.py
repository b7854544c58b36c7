#!/usr/bin/env python3
"""Writes nudge's reference architecture with PyTorch's default initialisation (Conv2d and Linear:
kaiming_uniform(a=sqrt(5)) weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases) to ONNX, untrained, so that
`nudge train --init FILE` can start from the weights a PyTorch script would start from (nudge's own start is
Glorot-uniform with zero biases).

    /usr/bin/python3 tools/onnx/export_pytorch_init.py --seed 0 --out /tmp/pytorch_init.onnx
"""

import argparse

import torch
from torch import nn


def reference_net():
    return nn.Sequential(
        nn.Conv2d(1, 24, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 36, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(36, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(64 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    net = reference_net().eval()
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), args.out, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    print(f"wrote {args.out}: reference architecture, PyTorch default init, seed {args.seed}")


if __name__ == "__main__":
    main()
