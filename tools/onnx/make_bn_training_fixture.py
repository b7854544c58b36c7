#!/usr/bin/env python3
"""The golden batch-norm training fixture: one PyTorch training-mode forward and backward of a tiny CNN with
BatchNorm2d and BatchNorm1d, written to tests/data/bn/bn_training_step.json for tests/test_bn_pytorch_golden.cpp.

The model is nudge's "1x8x8:conv4k3p1,bn,relu,pool2,flatten,dense6,bn,relu,dense3" under nudge's tensor names
(conv1, bn1, dense1, bn2, dense2; PyTorch's own layout and state_dict names), with seeded random weights and
batch-norm scale, shift and running statistics away from the identity, so that a statistic taken over the wrong
axis, a biased/unbiased mix-up or a missing term shows. One batch of 6 images in [0,1] with labels; model.train();
the mean cross-entropy; loss.backward(). Written: format and version, torch's version, the architecture, inputs,
labels, every tensor before the step (running statistics included), the logits, the loss, the gradient of every
trained tensor, and the running statistics after the forward (momentum 0.1, eps 1e-5: PyTorch's defaults, nudge's).
Every float is a float32 value written as the double that equals it (Python's repr), so it reads back exactly.

    nice -n 10 /usr/bin/python3 tools/onnx/make_bn_training_fixture.py    # a second; Debian 12's python3-torch 1.13
"""
import json
import os

import torch
import torch.nn as nn

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "bn", "bn_training_step.json")
ARCH = "1x8x8:conv4k3p1,bn,relu,pool2,flatten,dense6,bn,relu,dense3"
N = 6


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.dense1 = nn.Linear(4 * 4 * 4, 6)
        self.bn2 = nn.BatchNorm1d(6)
        self.dense2 = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.flatten(x, 1)
        return self.dense2(torch.relu(self.bn2(self.dense1(x))))


def floats(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def main():
    torch.manual_seed(20261203)
    net = Net()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            c = bn.num_features
            bn.weight.copy_(torch.rand(c) + 0.5)
            bn.bias.copy_(torch.rand(c) - 0.5)
            bn.running_mean.copy_(torch.rand(c) - 0.5)
            bn.running_var.copy_(torch.rand(c) * 1.5 + 0.5)
    x = torch.rand(N, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    names = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    before = {k: v.clone() for k, v in net.state_dict().items() if k in names}
    net.train()
    logits = net(x)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    trained = dict(net.named_parameters())
    after = net.state_dict()
    fixture = {
        "format": "nudge-bn-training-fixture",
        "version": 1,
        "torch": torch.__version__,
        "architecture": ARCH,
        "batch": N,
        "eps": 1e-5,
        "momentum": 0.1,
        "inputs": floats(x),
        "labels": labels.tolist(),
        "tensors": {k: {"shape": list(before[k].shape), "data": floats(before[k])} for k in names},
        "logits": floats(logits),
        "loss": float(loss.item()),
        "grads": {k: floats(trained[k].grad) for k in names if k in trained},
        "running_after": {k: floats(after[k]) for k in names if "running" in k},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: loss {fixture['loss']:.6f}, {len(names)} tensors")


if __name__ == "__main__":
    main()
