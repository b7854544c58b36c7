#!/usr/bin/env python3
"""Diversity of class prototypes against real digits: per class, the mean pairwise L2 distance between the
prototypes of a nudge visualize (or optimize) job (images.npy rows, their target from results.csv) and between as
many real MNIST test digits of that class (the first ones), and their ratio. A ratio near 1 means the prototypes
differ from each other as much as real digits do; near 0, they are copies of one image.

    python3 tools/prototype_diversity.py [--mnist data/mnist] NAME=out/vis ...

Needs numpy (Debian's python3-numpy, with /usr/bin/python3).
"""

import argparse
import csv

import numpy as np


def mean_pairwise(x):
    x = x.reshape(len(x), -1).astype(np.float64)
    if len(x) < 2:
        return float("nan")
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    iu = np.triu_indices(len(x), 1)
    return float(np.sqrt(d2[iu]).mean())


def load_npy(path):
    return np.load(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default="data/mnist")
    ap.add_argument("jobs", nargs="+")
    a = ap.parse_args()
    images = np.fromfile(f"{a.mnist}/t10k-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 28, 28) / 255.0
    labels = np.fromfile(f"{a.mnist}/t10k-labels-idx1-ubyte", dtype=np.uint8, offset=8)
    print("| job | measure | " + " | ".join(str(c) for c in range(10)) + " | mean |")
    print("| --- | --- | " + " | ".join("---" for _ in range(10)) + " | --- |")
    for job in a.jobs:
        name, folder = job.split("=", 1)
        protos = load_npy(f"{folder}/images.npy")
        targets = [r["target"] for r in csv.DictReader(open(f"{folder}/results.csv"))]
        ratios, proto_d, real_d = [], [], []
        for c in range(10):
            rows = [i for i, t in enumerate(targets) if t == str(c)]
            p = mean_pairwise(protos[rows])
            r = mean_pairwise(images[labels == c][: len(rows)])
            proto_d.append(p)
            real_d.append(r)
            ratios.append(p / r)
        print(f"| {name} | prototypes | " + " | ".join(f"{v:.2f}" for v in proto_d) + f" | {np.mean(proto_d):.2f} |")
        print(f"| | real digits | " + " | ".join(f"{v:.2f}" for v in real_d) + f" | {np.mean(real_d):.2f} |")
        print(f"| | ratio | " + " | ".join(f"{v:.2f}" for v in ratios) + f" | {np.mean(ratios):.2f} |")


if __name__ == "__main__":
    main()
