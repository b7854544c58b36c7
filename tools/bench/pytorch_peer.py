#!/usr/bin/env python3
"""The jobs nudge does, done in PyTorch, as a yardstick for nudge's figures.

  train     the nudge training recipe on MNIST from the IDX files: Glorot-uniform weights and zero biases, Adam
            lr 1e-3 betas 0.9/0.999 eps 1e-7, batch 32, reshuffled each epoch; reports wall time and test accuracy.
  adv-train adversarial training, the recipe of `nudge train --adversarial`: pgd (uniform random start in the
            L-inf eps-ball, --adv-steps sign steps of --adv-lr ascending the cross-entropy, the last iterate), fgsm
            (Fast-AT: one step of 1.25 eps from the random start) or trades (x + 0.001 N(0,1), sign steps ascending
            KL(p(x) || p(x')), loss CE + beta KL); Adam with a cyclic (0 -> lr at 2/5 -> 0) or constant learning
            rate per iteration, eps ramped linearly over --eps-ramp epochs, the model in eval mode for the attack
            (this network has no dropout or batch norm); reports wall time, images/s and test accuracy.
  optimize  N uniform-noise images in [0,1), targets i mod 10, Adam lr 0.1 eps 1e-7 on the pixels, clamped to [0,1]
            after each step, cross-entropy, a fixed number of steps with no early stop; reports image-steps/s
            (N * steps / seconds) for each batch size of a sweep (N is processed batch by batch) and the best.
            The noise is nudge's own (`nudge optimize --init noise --seed S`: Philox4x32-10 keyed by seed and image
            index, host/core/counter_rng.h, reimplemented in NumPy here), so both start from the very same images.

The architecture is nudge's reference one (Architecture::reference_string()), built by hand here:
  1x28x28 -> conv3x3 24 -> ReLU -> maxpool2 -> conv3x3 36 -> ReLU -> maxpool2 -> conv3x3 64 -> ReLU -> flatten
  (C,H,W) -> dense 64 -> ReLU -> dense 10
Weights come from nudge's safetensors file, parsed here with struct + json + numpy (no safetensors package needed).

The last line printed is one JSON object with the results. Examples:
  python3 tools/bench/pytorch_peer.py optimize --n 8192 --steps 20 --threads 2
  python3 tools/bench/pytorch_peer.py train --epochs 1
  python3 tools/bench/pytorch_peer.py adv-train --method pgd --epochs 1 --limit 10000
  python3 tools/bench/pytorch_peer.py optimize --device cuda --batch 4096,16384,65536 --n 65536 --compile
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARAM_NAMES = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
               "dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias"]
REFERENCE_ARCH = "1x28x28:conv24k3,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10"


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """host/core/counter_rng.h's philox4x32_10 on uint32 arrays (same round structure, constants and output order)."""
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    low = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = m0 * c0.astype(np.uint64)
        p1 = m1 * c2.astype(np.uint64)
        hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & low).astype(np.uint32)
        hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & low).astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def nudge_noise(seed, n, pixels=784, chunk=8192):
    """nudge's noise start images 0..n-1 for `seed` (host/optimize/start_images.cpp noise_image): pixel p of image i is 24
    bits of Philox block p/4 of (seed, stream 1, index i), scaled to [0,1). float32 [n, pixels]."""
    out = np.empty((n, pixels), dtype=np.float32)
    blocks = (pixels + 3) // 4
    for first in range(0, n, chunk):
        m = min(chunk, n - first)
        idx = np.arange(first, first + m, dtype=np.uint64)[:, None]
        c0 = np.broadcast_to(np.arange(blocks, dtype=np.uint32)[None, :], (m, blocks))
        c1 = np.broadcast_to((idx & np.uint64(0xFFFFFFFF)).astype(np.uint32), (m, blocks))
        c2 = np.broadcast_to((idx >> np.uint64(32)).astype(np.uint32), (m, blocks))
        c3 = np.full((m, blocks), 1, dtype=np.uint32)  # kStreamNoise
        v = philox4x32_10(c0, c1, c2, c3, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
        bits = np.stack(v, axis=-1).reshape(m, blocks * 4)[:, :pixels]
        out[first:first + m] = (bits >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return out


class ReferenceCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 3)
        self.conv2 = nn.Conv2d(24, 36, 3)
        self.conv3 = nn.Conv2d(36, 64, 3)
        self.dense1 = nn.Linear(64 * 3 * 3, 64)
        self.dense2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = torch.flatten(x, 1)
        return self.dense2(F.relu(self.dense1(x)))


def fresh_model(device):
    """The reference CNN with nudge's initialisation: Glorot-uniform weights, zero biases."""
    model = ReferenceCnn()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model.to(device)


def read_safetensors(path):
    """Returns ({name: float32 ndarray}, metadata). F32 little-endian only, as nudge writes."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        sys.exit(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        sys.exit(f"{path}: header length {header_len} runs past the end of the file ({len(data)} bytes)")
    header = json.loads(data[8:8 + header_len])
    body = memoryview(data)[8 + header_len:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} has dtype {info['dtype']}; only F32 is supported")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(body[begin:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = arr.copy()
    return tensors, metadata


def load_model(path):
    tensors, metadata = read_safetensors(path)
    arch = metadata.get("nudge.architecture", REFERENCE_ARCH)
    if arch != REFERENCE_ARCH:
        sys.exit(f"{path}: architecture {arch!r} is not the reference one this script builds")
    model = ReferenceCnn()
    state = {}
    for name in PARAM_NAMES:
        if name not in tensors:
            sys.exit(f"{path}: no tensor {name}")
        state[name] = torch.from_numpy(tensors[name])
    model.load_state_dict(state)
    return model


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        sys.exit(f"{path}: {arr.size} bytes of data for dimensions {dims}")
    return arr.reshape(dims)


def load_split(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def maybe_compile(model, want):
    """Returns (model, note). torch.compile exists from PyTorch 2.0; earlier versions run eagerly, and say so."""
    if not want:
        return model, "eager"
    if not hasattr(torch, "compile"):
        print(f"--compile: torch {torch.__version__} has no torch.compile; running eagerly", file=sys.stderr)
        return model, "eager (torch.compile unavailable)"
    return torch.compile(model), "torch.compile"


def run_train(args, device):
    torch.manual_seed(args.seed)
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "test")
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    model = fresh_model(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    net, mode = maybe_compile(model, args.compile)

    count = x_train.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    epochs = []
    total = 0.0
    for epoch in range(args.epochs):
        order = torch.randperm(count, generator=gen).to(device)
        sync(device)
        t0 = time.perf_counter()
        loss_acc = torch.zeros((), device=device)
        correct_acc = torch.zeros((), dtype=torch.int64, device=device)
        for b in range(0, count, args.train_batch):
            idx = order[b:b + args.train_batch]
            xb, yb = x_train[idx], y_train[idx]
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Accumulated on the device: a .item() per batch would synchronize a GPU every step.
            loss_acc += loss.detach() * yb.shape[0]
            correct_acc += (logits.detach().argmax(1) == yb).sum()
        sync(device)
        seconds = time.perf_counter() - t0
        total += seconds
        loss_sum, correct = float(loss_acc), int(correct_acc)
        epochs.append({"epoch": epoch + 1, "loss": loss_sum / count, "accuracy": correct / count,
                       "seconds": seconds, "images_per_s": count / seconds})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / count:.4f}  train acc {correct / count:.4f}  "
              f"{seconds:.1f} s  {count / seconds:.0f} images/s", file=sys.stderr)

    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_test[b:b + 4096]).argmax(1) == y_test[b:b + 4096]).sum())
                      for b in range(0, x_test.shape[0], 4096))
    return {"mode": "train", "execution": mode, "epochs": args.epochs, "batch": args.train_batch,
            "train_seconds": total, "train_images_per_s": count * args.epochs / total,
            "test_accuracy": correct / x_test.shape[0], "per_epoch": epochs}

def lr_at(schedule, lr, t, epochs):
    """host/train/train_schedule.cpp's learning_rate_at for constant and cyclic."""
    if schedule == "constant":
        return lr
    peak = 0.4 * epochs
    f = t / peak if t <= peak else (epochs - t) / (epochs - peak)
    return lr * min(max(f, 0.0), 1.0)


def adv_attack(net, method, x, y, eps, steps, alpha):
    """The training attack on one batch; returns the attacked images (no gradient)."""
    if method == "trades":
        with torch.no_grad():
            p_clean = F.softmax(net(x), dim=1)
        xa = (x + 0.001 * torch.randn_like(x)).detach()
        for _ in range(steps):
            xa.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(net(xa), dim=1), p_clean, reduction="sum")
            (g,) = torch.autograd.grad(kl, xa)
            xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0.0, 1.0)
        return xa.detach()
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(1 if method == "fgsm" else steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(net(xa), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0.0, 1.0)
    return xa.detach()


def run_adv_train(args, device):
    torch.manual_seed(args.seed)
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "test")
    count = min(args.limit, x_train.shape[0]) if args.limit > 0 else x_train.shape[0]
    x_train, y_train = x_train[:count].to(device), y_train[:count].to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)
    model = fresh_model(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-7)
    steps = 1 if args.method == "fgsm" else args.adv_steps
    alpha = args.adv_lr if args.adv_lr > 0 else (1.25 * args.eps if args.method == "fgsm" else 2.5 * args.eps / steps)
    batches = (count + args.train_batch - 1) // args.train_batch
    gen = torch.Generator().manual_seed(args.seed)
    total, epochs = 0.0, []
    for epoch in range(args.epochs):
        order = torch.randperm(count, generator=gen).to(device)
        sync(device)
        t0 = time.perf_counter()
        clean_correct = adv_correct = 0
        for b in range(batches):
            t = epoch + (b + 1) / batches
            lr = lr_at(args.lr_schedule, args.lr, t, args.epochs)
            for group in opt.param_groups:
                group["lr"] = lr
            eps = args.eps * min(t / args.eps_ramp, 1.0) if args.eps_ramp > 0 else args.eps
            idx = order[b * args.train_batch:(b + 1) * args.train_batch]
            xb, yb = x_train[idx], y_train[idx]
            model.eval()
            xa = adv_attack(model, args.method, xb, yb, eps, steps, alpha)
            model.train()
            if args.method == "trades":
                logits = model(xb)
                logits_adv = model(xa)
                loss = F.cross_entropy(logits, yb) + args.beta * F.kl_div(
                    F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
                clean_correct += int((logits.detach().argmax(1) == yb).sum())
            else:
                with torch.no_grad():
                    clean_correct += int((model(xb).argmax(1) == yb).sum())
                logits_adv = model(xa)
                loss = F.cross_entropy(logits_adv, yb)
            adv_correct += int((logits_adv.detach().argmax(1) == yb).sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        seconds = time.perf_counter() - t0
        total += seconds
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "images_per_s": count / seconds,
                       "clean_accuracy": clean_correct / count, "adv_accuracy": adv_correct / count})
        print(f"epoch {epoch + 1}/{args.epochs}: clean acc {clean_correct / count:.4f}  adv acc "
              f"{adv_correct / count:.4f}  {seconds:.1f} s  {count / seconds:.0f} images/s", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_test[b:b + 4096]).argmax(1) == y_test[b:b + 4096]).sum())
                      for b in range(0, x_test.shape[0], 4096))
    if args.save:
        torch.save(model.state_dict(), args.save)
    return {"mode": "adv-train", "method": args.method, "eps": args.eps, "attack_steps": steps, "alpha": alpha,
            "epochs": args.epochs, "batch": args.train_batch, "images": count, "train_seconds": total,
            "train_images_per_s": count * args.epochs / total, "test_accuracy": correct / x_test.shape[0],
            "per_epoch": epochs}


def optimize_batch(net, x0, targets, steps):
    """Adam on the pixels of one batch; returns the final images. Cross-entropy summed over the batch, so each
    image's gradient is that of its own loss, as in nudge."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1, betas=(0.9, 0.999), eps=1e-7)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), targets, reduction="sum")
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return x.detach()


def run_optimize(args, device):
    model = load_model(args.model).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)  # frozen: no weight gradients, as in nudge's input optimization
    net, mode = maybe_compile(model, args.compile)

    noise = torch.from_numpy(nudge_noise(args.seed, args.n)).reshape(args.n, 1, 28, 28).to(device)
    if args.channels_last:
        noise = noise.contiguous(memory_format=torch.channels_last)
    targets = (torch.arange(args.n) % 10).to(device)

    # Warm-up outside the timing: first-touch allocations, oneDNN/cuDNN algorithm choice, compilation.
    for batch in args.batch:
        b = min(batch, args.n)
        optimize_batch(net, noise[:b], targets[:b], 2)
    sync(device)

    sweep = []
    for batch in args.batch:
        seconds = 0.0
        hits = 0
        for b in range(0, args.n, batch):
            x0, t = noise[b:b + batch], targets[b:b + batch]
            sync(device)
            t0 = time.perf_counter()
            x = optimize_batch(net, x0, t, args.steps)
            sync(device)
            seconds += time.perf_counter() - t0
            with torch.no_grad():
                hits += int((net(x).argmax(1) == t).sum())
        rate = args.n * args.steps / seconds
        sweep.append({"batch": batch, "seconds": seconds, "image_steps_per_s": rate, "reached_target": hits / args.n})
        print(f"batch {batch}: {seconds:.2f} s, {rate:.0f} image-steps/s, {hits / args.n:.3f} reached the target",
              file=sys.stderr)
    best = max(sweep, key=lambda r: r["image_steps_per_s"])
    return {"mode": "optimize", "execution": mode, "n": args.n, "steps": args.steps, "sweep": sweep,
            "best_batch": best["batch"], "best_image_steps_per_s": best["image_steps_per_s"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "adv-train", "optimize"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (PyTorch 2.x)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format for the model and inputs")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN/cuBLAS (off: strict FP32, as nudge)")
    ap.add_argument("--model", default=os.path.join(REPO, "data/models/mnist_cnn.safetensors"))
    ap.add_argument("--data", default=os.path.join(REPO, "data/mnist"), help="folder with the MNIST IDX files")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=5, help="train: epochs (default 5)")
    ap.add_argument("--train-batch", type=int, default=32, help="train: batch size (default 32)")
    ap.add_argument("--method", choices=["pgd", "fgsm", "trades"], default="pgd", help="adv-train: the attack")
    ap.add_argument("--eps", type=float, default=0.3, help="adv-train: L-inf radius (default 0.3)")
    ap.add_argument("--eps-ramp", type=float, default=0.0, help="adv-train: eps ramp epochs (default 0)")
    ap.add_argument("--adv-steps", type=int, default=10, help="adv-train: attack steps (default 10)")
    ap.add_argument("--adv-lr", type=float, default=-1, help="adv-train: step size (default 2.5 eps/steps; fgsm 1.25 eps)")
    ap.add_argument("--beta", type=float, default=6.0, help="adv-train trades: KL weight (default 6)")
    ap.add_argument("--lr", type=float, default=5e-3, help="adv-train: Adam learning rate, the cyclic peak (default 5e-3)")
    ap.add_argument("--lr-schedule", choices=["constant", "cyclic"], default="cyclic")
    ap.add_argument("--limit", type=int, default=0, help="adv-train: first N training images (0 = all)")
    ap.add_argument("--save", default="", help="adv-train: torch.save the state dict here")
    ap.add_argument("--n", type=int, default=8192, help="optimize: images (default 8192)")
    ap.add_argument("--steps", type=int, default=20, help="optimize: Adam steps (default 20)")
    ap.add_argument("--batch", default="256,1024,4096", help="optimize: batch sizes to sweep (default 256,1024,4096)")
    args = ap.parse_args()
    try:
        args.batch = [int(b) for b in args.batch.split(",") if b]
    except ValueError:
        ap.error(f"--batch {args.batch!r}: expected a comma-separated list of integers")
    if not args.batch or min(args.batch) <= 0 or args.n <= 0 or args.steps <= 0 or args.epochs <= 0:
        ap.error("--batch, --n, --steps and --epochs must be positive")

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: PyTorch sees no CUDA device (or was built without CUDA); use --device cpu")
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device = torch.device(args.device)

    runs = {"train": run_train, "adv-train": run_adv_train, "optimize": run_optimize}
    result = runs[args.mode](args, device)
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    result.update({"torch": torch.__version__, "device": where, "threads": args.threads, "tf32": args.tf32,
                   "channels_last": args.channels_last})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
