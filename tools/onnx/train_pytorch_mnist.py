#!/usr/bin/env python3
"""Trains an MNIST CNN in PyTorch and exports it to ONNX, as an import test for nudge.

Why: nudge's own models never use padded or strided convolutions, batch norm or dropout;
a model trained elsewhere does. This script writes such a model the way a user would
(torch.onnx.export of an eval()-mode nn.Sequential) together with PyTorch's own
predictions on the MNIST test set, so `nudge eval` on the imported model can be checked
prediction by prediction, not just by accuracy.

Writes (into data/models/):
  pytorch_mnist_cnn.onnx                    opset 13, input "input" [N,1,28,28] (N dynamic), output "logits"
  pytorch_mnist_cnn.test_predictions.bin    10,000 bytes: PyTorch's argmax class per MNIST test image, in order
  pytorch_mnist_cnn.json                    recipe, versions, date, train time, machine, accuracy, ONNX ops

Run from the repository root (2 threads, about 5-10 minutes on the 2-core VM):
  nice -n 10 /usr/bin/python3 tools/onnx/train_pytorch_mnist.py [--data data/mnist] [--out data/models]
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import onnx_numpy_eval  # noqa: E402  (the independent check of the exported file)


def read_idx(path, magic, header):
    """An uncompressed IDX file (the MNIST format): big-endian header, then uint8 data."""
    with open(path, "rb") as f:
        raw = f.read()
    got = int.from_bytes(raw[0:4], "big")
    if got != magic:
        raise SystemExit("%s: magic %#x, expected %#x" % (path, got, magic))
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(header)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * header)
    if data.size != int(np.prod(dims)):
        raise SystemExit("%s: %d bytes of data, header says %s" % (path, data.size, dims))
    return data.reshape(dims)


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, prefix + "-images-idx3-ubyte"), 0x803, 3)
    labels = read_idx(os.path.join(data_dir, prefix + "-labels-idx1-ubyte"), 0x801, 1)
    # Pixels in [0,1] by /255 and nothing else: nudge feeds its models exactly that.
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def build_model(width):
    """The recipe's CNN. `width` scales the conv channels (32 in the recipe)."""
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),        # 28 -> 14
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.MaxPool2d(2),                                                             # 14 -> 7
        nn.Flatten(),
        nn.Dropout(0.3), nn.Linear(2 * w * 7 * 7, 128), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(128, 10),
    )


@torch.no_grad()
def predict(model, x, batch=1000):
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--out", default="data/models")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (a quick smoke run)")
    args = p.parse_args()

    # Two threads: the VM has two cores, shared with other work.
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "t10k")
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]

    model = build_model(args.width)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)  # the shuffle order is part of the recipe

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for bi, i in enumerate(range(0, len(xtr), args.batch)):
            idx = perm[i:i + args.batch]
            xb, yb = xtr[idx], ytr[idx]
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += len(idx)
            correct += int((out.argmax(1) == yb).sum())
            loss_sum += float(loss) * len(idx)
            if bi % 100 == 0:
                print("epoch %d batch %d loss %.4f (%.0f s)" % (epoch + 1, bi, float(loss), time.time() - t0),
                      flush=True)
        print("epoch %d: train loss %.4f, train acc %.4f, %.0f s" %
              (epoch + 1, loss_sum / total, correct / total, time.time() - t0), flush=True)
    train_s = time.time() - t0

    model.eval()
    logits = predict(model, xte)
    pred = logits.argmax(1).numpy().astype(np.uint8)
    acc = float((pred == yte.numpy()).mean())
    print("test accuracy %.4f (%d/%d), train time %.0f s" % (acc, int((pred == yte.numpy()).sum()), len(yte), train_s))

    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "pytorch_mnist_cnn")
    onnx_path = base + ".onnx"
    # Exported the way a user would: eval mode, so BatchNorm uses its running statistics
    # (and the exporter may fold it into the preceding Conv) and Dropout disappears.
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), onnx_path + ".tmp", opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    os.replace(onnx_path + ".tmp", onnx_path)
    size = os.path.getsize(onnx_path)
    if size >= 2 * 1024 * 1024:
        raise SystemExit("%s is %d bytes, over 2 MB" % (onnx_path, size))

    import onnx
    m = onnx.load(onnx_path)
    onnx.checker.check_model(m)
    ops = sorted({n.op_type for n in m.graph.node})

    # The independent check: the file, run by the NumPy evaluator on all 10,000 test images,
    # must give PyTorch's classes and (nearly) its logits.
    ev = np.concatenate([onnx_numpy_eval.evaluate(m, xte[i:i + 500].numpy()) for i in range(0, len(xte), 500)])
    mabs, mrel = onnx_numpy_eval.diff(ev, logits.numpy())
    agree = int((ev.argmax(1) == pred).sum())
    print("numpy evaluator vs PyTorch: max abs diff %.3g, max rel diff %.3g, argmax agree %d/10000" %
          (mabs, mrel, agree))

    with open(base + ".test_predictions.bin.tmp", "wb") as f:
        f.write(pred.tobytes())
    os.replace(base + ".test_predictions.bin.tmp", base + ".test_predictions.bin")

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    meta = {
        "name": "pytorch_mnist_cnn",
        "description": "MNIST CNN trained in PyTorch and exported with torch.onnx.export, to test nudge's ONNX "
                       "import on padded and stride-2 convolutions, batch norm and dropout.",
        "architecture": [
            "Conv2d(1,%d,3,padding=1)" % args.width, "BatchNorm2d(%d)" % args.width, "ReLU",
            "Conv2d(%d,%d,3,stride=2,padding=1)" % (args.width, args.width), "BatchNorm2d(%d)" % args.width, "ReLU",
            "Conv2d(%d,%d,3,padding=1)" % (args.width, 2 * args.width), "BatchNorm2d(%d)" % (2 * args.width), "ReLU",
            "MaxPool2d(2)", "Flatten", "Dropout(0.3)", "Linear(%d,128)" % (2 * args.width * 49), "ReLU",
            "Dropout(0.3)", "Linear(128,10)"],
        "recipe": {"optimizer": "Adam", "lr": args.lr, "batch": args.batch, "epochs": args.epochs,
                   "seed": args.seed, "loss": "cross-entropy", "shuffle": "torch.randperm per epoch, "
                   "torch.Generator seeded with seed", "train_images": len(xtr),
                   "inputs": "pixels / 255 in [0,1], no mean/std normalisation", "threads": args.threads},
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": 13,
        "export": "torch.onnx.export, eval mode, training=TrainingMode.EVAL, do_constant_folding=True, "
                  "dynamic batch (dim 0 'N'), input 'input', output 'logits'",
        "export_note": "TrainingMode.EVAL lets torch 1.13 fold each BatchNorm2d into its Conv, so the graph has "
                       "no BatchNormalization node (tests/data/onnx/padded_bn_unfused.onnx keeps them); eval-mode "
                       "Dropout is not exported.",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train_time_s": round(train_s, 1),
        "machine": "2-core VM (%s), CPU only, %d torch threads" % (cpu, args.threads),
        "test_accuracy": acc,
        "test_correct": int((pred == yte.numpy()).sum()),
        "test_predictions": "pytorch_mnist_cnn.test_predictions.bin: uint8 argmax class per t10k image, in order",
        "onnx_bytes": size,
        "ops": ops,
        "nodes": [[n.name, n.op_type] for n in m.graph.node],
        "numpy_eval_max_abs_diff": mabs,
        "numpy_eval_max_rel_diff": mrel,
        "numpy_eval_argmax_agree": agree,
    }
    with open(base + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(base + ".json.tmp", base + ".json")
    print("wrote %s (%d bytes), %s, %s; ops %s" % (onnx_path, size, base + ".test_predictions.bin",
                                                   base + ".json", ops))


if __name__ == "__main__":
    main()
