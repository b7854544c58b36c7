#!/usr/bin/env python3
"""Writes the ONNX import test fixtures in tests/data/onnx/ (PyTorch-exported models with
PyTorch's logits) and tests/data/onnx/hostile/ (hand-built graphs nudge must refuse).

Why: nudge's ONNX importer has to match PyTorch on the layer variants real exported models
use (padding, stride, batch norm before and after folding, reshape vs flatten, MatMul+Add
dense layers, pooling variants). Each fixture is a small model with fixed random weights,
8 fixed inputs and the logits PyTorch computes for them, so a C++ test can load NAME.onnx,
run NAME.inputs.bin and compare with NAME.logits.bin without PyTorch. Every fixture is also
run through tools/onnx/onnx_numpy_eval.py, an independent reader of the ONNX file, and the
difference is recorded in NAME.json, so a disagreement can be placed in the file or in nudge.

Run from the repository root (a minute or so; writes only under tests/data/onnx/):
  nice -n 10 /usr/bin/python3 tools/onnx/make_fixtures.py

The outputs are committed, so CI needs neither PyTorch nor this script.
"""

import io
import json
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import onnx_numpy_eval  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "data", "onnx")
HOSTILE = os.path.join(OUT, "hostile")
OPSET = 13
N_INPUTS = 8
EXPORT_BATCH = 3  # export traces a batch of 3, the fixtures run 8: checks the batch really is dynamic
LOGITS_ARE = "outputs of the last Linear layer (softmax removed)"
MAX_FILE = 300 * 1024
MAX_TOTAL = 2 * 1024 * 1024


# ---------------------------------------------------------------- modules

class View(nn.Module):
    """x.view(...) inside an nn.Sequential, so the exporter emits Reshape rather than Flatten.

    batch_from_input=True traces x.view(x.size(0), -1): with a dynamic batch the exporter
    cannot fold x.size(0) and writes Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    Otherwise x.view(-1, features) gives Reshape with a constant shape [-1, features].
    """

    def __init__(self, features, batch_from_input=False):
        super().__init__()
        self.features = features
        self.batch_from_input = batch_from_input

    def forward(self, x):
        if self.batch_from_input:
            return x.view(x.size(0), -1)
        return x.view(-1, self.features)


class MatMulAdd(nn.Module):
    """A dense layer written as torch.matmul(x, W) + b with W stored [in, out], the way
    tf2onnx writes dense layers; nn.Linear would export as Gemm with transB=1."""

    def __init__(self, fin, fout):
        super().__init__()
        bound = 1.0 / np.sqrt(fin)
        self.weight = nn.Parameter(torch.empty(fin, fout).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(fout).uniform_(-bound, bound))

    def forward(self, x):
        return torch.matmul(x, self.weight) + self.bias


def randomize_batchnorm(model, seed):
    """Non-trivial BatchNorm parameters and running statistics: the default init (mean 0,
    var 1, weight 1, bias 0) is the identity, which would let a wrong fold pass the test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)           # [-0.5, 0.5]
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))      # [0.5, 2]
                m.weight.copy_(0.5 + torch.rand(c, generator=g))                 # [0.5, 1.5]
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)                   # [-0.5, 0.5]
    return model


# ---------------------------------------------------------------- the models

def padded_bn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(16 * 7 * 7, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def fastat_stride2():
    # The Fast-AT MNIST net's conv part; its Linear(1568, 100) alone is 627 KB of float32,
    # over the 300 KB per-file limit, so the hidden layer has 32 units here.
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),      # 28 -> 14
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),     # 14 -> 7
        nn.Flatten(), nn.Linear(32 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


def pool_variants(batch_from_input=False):
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(),                            # 28 -> 24
        nn.MaxPool2d(3, stride=2, padding=1),                     # 24 -> 12
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),                 # 12 -> 12
        nn.AvgPool2d(2),                                          # 12 -> 6
        View(8 * 6 * 6, batch_from_input),
        nn.Linear(8 * 6 * 6, 10), nn.LogSoftmax(dim=1))


def reference():
    return nn.Sequential(
        nn.Conv2d(1, 24, 3), nn.ReLU(), nn.MaxPool2d(2),          # 26 -> 13
        nn.Conv2d(24, 36, 3), nn.ReLU(), nn.MaxPool2d(2),         # 11 -> 5
        nn.Conv2d(36, 64, 3), nn.ReLU(),                          # 3
        nn.Flatten(), nn.Linear(64 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10))


def matmul_add():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),           # 26 -> 13
        nn.Flatten(), MatMulAdd(4 * 13 * 13, 10))


def gap():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 10, 3, stride=2, padding=1), nn.ReLU(),      # 28 -> 14
        # Global average of the 14x14 map. count_include_pad=False (no padding here, so the same
        # result) keeps torch from writing the no-op Pad it puts before pool_variants' AveragePool.
        nn.AvgPool2d(14, count_include_pad=False),
        nn.Flatten(), nn.Linear(10, 10))


EVAL = torch.onnx.TrainingMode.EVAL
PRESERVE = torch.onnx.TrainingMode.PRESERVE

# (name, builder, seed, export options, description)
FIXTURES = [
    ("padded_bn", padded_bn, 1, dict(do_constant_folding=False, training=EVAL),
     "Padded 3x3 convs with BatchNorm2d, MaxPool, Dropout, Linear + BatchNorm1d. Exported in EVAL mode, "
     "where torch 1.13's eval peephole folds each BatchNorm2d into its Conv; the BatchNorm1d after the "
     "Gemm is not folded by PyTorch and stays a BatchNormalization node for nudge to fold."),
    ("padded_bn_unfused", padded_bn, 1, dict(do_constant_folding=False, training=PRESERVE),
     "The same model and weights as padded_bn, exported with TrainingMode.PRESERVE from eval mode: the "
     "eval peephole is skipped, so explicit BatchNormalization nodes follow both Convs and the Gemm."),
    ("fastat_stride2", fastat_stride2, 2, dict(do_constant_folding=True, training=EVAL),
     "Fast-AT MNIST net shape: 4x4 stride-2 padding-1 convs (28->14->7), Linear to 32 hidden units "
     "(100 in the original; reduced to keep the file under 300 KB), Linear to 10."),
    ("pool_variants", pool_variants, 3, dict(do_constant_folding=True, training=EVAL),
     "Valid 5x5 conv, MaxPool 3x3 stride 2 padding 1, padded 3x3 conv, AvgPool 2x2, x.view(-1, 288) "
     "(a Reshape with a constant shape [-1, 288], not a Flatten), Linear, final LogSoftmax. nn.AvgPool2d's "
     "default count_include_pad=True makes torch 1.13 write a Pad (constant mode, pads all zero: a no-op) "
     "before the AveragePool, so a real PyTorch AvgPool2d model has Pad -> AveragePool."),
    ("pool_variants_shape_chain", lambda: pool_variants(batch_from_input=True), 3, dict(do_constant_folding=True, training=EVAL),
     "pool_variants with x.view(x.size(0), -1): with a dynamic batch the exporter writes the Reshape's "
     "shape as Shape -> Gather -> Unsqueeze -> Concat of the input's batch size and -1 (a common "
     "PyTorch idiom; the same weights and logits as pool_variants)."),
    ("reference", reference, 4, dict(do_constant_folding=True, training=EVAL),
     "nudge's reference architecture (3 valid 3x3 convs 24/36/64, two MaxPool 2x2, Linear 576->64->10), "
     "flattened in (C,H,W) order like nudge, so the import can take the fused path."),
    ("matmul_add", matmul_add, 5, dict(do_constant_folding=True, training=EVAL),
     "A dense layer written as torch.matmul(x, W) + b with W stored [in, out]: exports as MatMul + Add "
     "(tf2onnx style) instead of Gemm."),
    ("gap", gap, 6, dict(do_constant_folding=True, training=EVAL),
     "Padded conv, stride-2 padded conv to 10 channels at 14x14, AvgPool2d(14, count_include_pad=False) "
     "as a global average (exports as a 14x14 AveragePool, not GlobalAveragePool, and without the Pad that "
     "the default count_include_pad=True adds), Flatten, Linear(10,10)."),
]


# ---------------------------------------------------------------- helpers

def fixed_inputs():
    """8 images in [0,1]: image 0 all zeros, image 1 all ones, the rest seeded uniform."""
    rng = np.random.default_rng(20240601)
    x = rng.uniform(0.0, 1.0, size=(N_INPUTS, 1, 28, 28)).astype(np.float32)
    x[0] = 0.0
    x[1] = 1.0
    return x


def write_f32(path, arr):
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def attr_json(a):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, TensorProto):
        arr = numpy_helper.to_array(v)
        return {"tensor": arr.tolist() if arr.size <= 16 else "dtype %s shape %s" % (arr.dtype, list(arr.shape))}
    if isinstance(v, (list, tuple)):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def describe_nodes(model):
    """Every node with its inputs (initializers with their shapes) and attributes, so the
    json documents exactly what the exporter wrote (pads order, ceil_mode, transB, ...)."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        ins = []
        for name in n.input:
            ins.append("%s %s" % (name, inits[name]) if name in inits else name)
        out.append({"name": n.name, "op": n.op_type, "inputs": ins, "outputs": list(n.output),
                    "attrs": {a.name: attr_json(a) for a in n.attribute}})
    return out


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def batchnorm_report(model):
    """For each BatchNormalization node: the op that produces its input."""
    prod = producers(model)
    rep = []
    for n in model.graph.node:
        if n.op_type == "BatchNormalization":
            p = prod.get(n.input[0])
            rep.append({"node": n.name, "after": p.op_type if p is not None else "graph input"})
    return rep


def reshape_report(model):
    """For each Reshape: whether its shape input is a constant (initializer or Constant node)
    or computed (e.g. from Shape of the data)."""
    prod = producers(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rep = []
    for n in model.graph.node:
        if n.op_type != "Reshape":
            continue
        s = n.input[1]
        if s in inits:
            rep.append({"node": n.name, "shape": "initializer", "value": inits[s].tolist()})
        elif s in prod and prod[s].op_type == "Constant":
            rep.append({"node": n.name, "shape": "Constant node",
                        "value": numpy_helper.to_array(prod[s].attribute[0].t).tolist()})
        else:
            chain, todo, seen = [], [s], set()
            while todo:
                v = todo.pop()
                if v in seen or v not in prod:
                    continue
                seen.add(v)
                chain.append(prod[v].op_type)
                if prod[v].op_type != "Shape":  # Shape reads only the data's shape: stop there
                    todo.extend(prod[v].input)
            rep.append({"node": n.name, "shape": "computed", "chain_ops": sorted(set(chain))})
    return rep


def dump_json(meta):
    """Indented JSON with each list of scalars and each node on one line, for reading diffs."""
    def one(v):
        return json.dumps(v, separators=(", ", ": "))
    lines = ["{"]
    items = list(meta.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append('  "%s": [' % k)
            lines.extend("    %s%s" % (one(e), "," if j + 1 < len(v) else "") for j, e in enumerate(v))
            lines.append("  ]" + comma)
        else:
            lines.append('  "%s": %s%s' % (k, one(v), comma))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # still valid JSON
    return text


def export(model, path, opts):
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(EXPORT_BATCH, 1, 28, 28), buf, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, **opts)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return onnx.load_from_string(data)


def opts_json(opts):
    return {k: (str(v) if not isinstance(v, (bool, int, float, str)) else v) for k, v in opts.items()}


# ---------------------------------------------------------------- fixtures

def make_fixture(name, build, seed, opts, description, x):
    torch.manual_seed(seed)
    model = randomize_batchnorm(build(), seed + 1000).eval()
    ends_with_softmax = isinstance(model[-1], (nn.Softmax, nn.LogSoftmax))
    with torch.no_grad():
        # The logits are what the last Linear layer outputs: the model without its final softmax.
        logits = (model[:-1] if ends_with_softmax else model)(torch.from_numpy(x)).numpy()
    path = os.path.join(OUT, name + ".onnx")
    m = export(model, path, opts)
    onnx.checker.check_model(m)

    ops = sorted({n.op_type for n in m.graph.node})
    if ends_with_softmax != (m.graph.node[-1].op_type in ("Softmax", "LogSoftmax")):
        raise SystemExit("%s: final softmax in the model %s but graph ends with %s" %
                         (name, ends_with_softmax, m.graph.node[-1].op_type))
    ev = onnx_numpy_eval.evaluate(m, x)
    mabs, mrel = onnx_numpy_eval.diff(ev, logits)
    if mabs > 1e-4 or not (ev.argmax(1) == logits.argmax(1)).all():
        raise SystemExit("%s: numpy evaluator disagrees with PyTorch (max abs diff %g)" % (name, mabs))

    write_f32(os.path.join(OUT, name + ".inputs.bin"), x)
    write_f32(os.path.join(OUT, name + ".logits.bin"), logits)
    meta = {
        "name": name,
        "description": description,
        "input_shape": list(x.shape),
        "classes": int(logits.shape[1]),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": OPSET,
        "export": dict(opts_json(opts), dynamic_axes="input/logits dim 0 'N'",
                       traced_batch=EXPORT_BATCH, input_name="input", output_name="logits"),
        "seed": seed,
        "ops": ops,
        "ends_with_softmax": ends_with_softmax,
        "logits_are": LOGITS_ARE,
        "batchnorm_nodes": batchnorm_report(m),
        "reshape_nodes": reshape_report(m),
        "nodes": describe_nodes(m),
        "onnx_checker": "passed",
        "numpy_eval_max_abs_diff": mabs,
        "numpy_eval_max_rel_diff": mrel,
        "pytorch_argmax": logits.argmax(1).tolist(),
    }
    return m, meta, logits


def make_dropout_identity(fastat_model, x, logits):
    """fastat_stride2 with an Identity after the first Relu and an inference Dropout (ratio 0.5,
    no training_mode input) before the first Gemm, inserted by graph surgery: torch's exporter
    drops Dropout in eval mode, but other exporters (and training-mode exports) keep such nodes.
    The logits are fastat_stride2's."""
    m = onnx.ModelProto()
    m.CopyFrom(fastat_model)
    g = m.graph
    nodes = list(g.node)
    relu = next(i for i, n in enumerate(nodes) if n.op_type == "Relu")
    gemm = next(i for i, n in enumerate(nodes) if n.op_type == "Gemm")
    r_out = nodes[relu].output[0]
    g_in = nodes[gemm].input[0]
    ident = helper.make_node("Identity", [r_out], [r_out + "_identity"], name="inserted_identity")
    g.initializer.append(numpy_helper.from_array(np.array(0.5, dtype=np.float32), "dropout_ratio"))
    drop = helper.make_node("Dropout", [g_in, "dropout_ratio"], [g_in + "_dropout"], name="inserted_dropout")
    for n in nodes[relu + 1:]:
        for k, v in enumerate(n.input):
            if v == r_out:
                n.input[k] = r_out + "_identity"
    nodes[gemm].input[0] = g_in + "_dropout"
    new = nodes[:relu + 1] + [ident] + nodes[relu + 1:gemm] + [drop] + nodes[gemm:]
    del g.node[:]
    g.node.extend(new)
    onnx.checker.check_model(m)
    name = "dropout_identity"
    onnx.save(m, os.path.join(OUT, name + ".onnx"))
    ev = onnx_numpy_eval.evaluate(m, x)
    mabs, mrel = onnx_numpy_eval.diff(ev, logits)
    if mabs > 1e-4:
        raise SystemExit("%s: numpy evaluator disagrees with PyTorch (max abs diff %g)" % (name, mabs))
    write_f32(os.path.join(OUT, name + ".inputs.bin"), x)
    write_f32(os.path.join(OUT, name + ".logits.bin"), logits)
    return m, {
        "name": name,
        "description": "fastat_stride2 with an Identity node after the first Relu and an inference Dropout "
                       "(ratio 0.5, no training_mode input) before the first Gemm, inserted with the onnx API; "
                       "torch's exporter drops Dropout in eval mode, other exporters keep such nodes. The logits "
                       "are fastat_stride2's.",
        "input_shape": list(x.shape),
        "classes": int(logits.shape[1]),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": OPSET,
        "export": "fastat_stride2.onnx edited with the onnx Python API (tools/onnx/make_fixtures.py)",
        "ops": sorted({n.op_type for n in m.graph.node}),
        "ends_with_softmax": False,
        "logits_are": LOGITS_ARE,
        "nodes": describe_nodes(m),
        "onnx_checker": "passed",
        "numpy_eval_max_abs_diff": mabs,
        "numpy_eval_max_rel_diff": mrel,
        "pytorch_argmax": logits.argmax(1).tolist(),
    }


# ---------------------------------------------------------------- hostile graphs

def _w(rng, *shape):
    return numpy_helper.from_array(rng.uniform(-0.5, 0.5, size=shape).astype(np.float32))


def hostile_graph(variant):
    """A tiny sequential CNN built with onnx.helper, valid for nudge except for `variant`:
    input [N,1,28,28] -> conv1 (4ch, 3x3, pad 1) -> relu1 -> [variant] -> pool (MaxPool 4x4 s4)
    -> flatten -> fc (Gemm 196 -> 10) -> "logits". ~9 KB each."""
    rng = np.random.default_rng(7)
    inits, nodes = [], []

    def init(name, *shape):
        t = _w(rng, *shape)
        t.name = name
        inits.append(t)
        return name

    in_c = 3 if variant == "nchw_3channel" else 1
    dims = ["N", in_c, 28, 28] if variant != "dynamic_hw" else ["N", 1, "H", "W"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])

    nodes.append(helper.make_node("Conv", ["input", init("conv1.weight", 4, in_c, 3, 3), init("conv1.bias", 4)],
                                  ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
    if variant == "unknown_op":
        nodes.append(helper.make_node("LeakyRelu", ["c1"], ["r1"], name="leaky1", alpha=0.1))
    else:
        nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    last = "r1"
    if variant in ("branch", "conv_group", "dilated"):
        conv2 = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        wshape = (4, 4, 3, 3)
        if variant == "conv_group":
            conv2["group"] = 2
            wshape = (4, 2, 3, 3)
        if variant == "dilated":
            conv2["dilations"] = [2, 2]
            conv2["pads"] = [2, 2, 2, 2]  # keeps 28x28 with the 5x5 effective kernel
        nodes.append(helper.make_node("Conv", ["r1", init("conv2.weight", *wshape), init("conv2.bias", 4)],
                                      ["c2"], name="conv2", **conv2))
        last = "c2"
        if variant == "branch":
            # Residual: relu1's output feeds both conv2 and the Add, so the graph is not a chain.
            nodes.append(helper.make_node("Add", ["r1", "c2"], ["res"], name="residual_add"))
            last = "res"
        nodes.append(helper.make_node("Relu", [last], ["r2"], name="relu2"))
        last = "r2"
    if variant == "bn_after_relu":
        bn = [init("bn.scale", 4), init("bn.bias", 4), init("bn.mean", 4)]
        var = numpy_helper.from_array(rng.uniform(0.5, 2.0, size=4).astype(np.float32), "bn.var")
        inits.append(var)
        nodes.append(helper.make_node("BatchNormalization", [last] + bn + ["bn.var"], ["bnout"], name="bn_after_relu"))
        last = "bnout"
    if variant == "avgpool_pad":
        nodes.append(helper.make_node("AveragePool", [last], ["p"], name="pool", kernel_shape=[4, 4],
                                      strides=[4, 4], pads=[1, 1, 1, 1]))  # (28+2-4)//4+1 = 7
    elif variant == "maxpool_ceil":
        nodes.append(helper.make_node("MaxPool", [last], ["p"], name="pool", kernel_shape=[3, 3],
                                      strides=[4, 4], ceil_mode=1))  # ceil((28-3)/4)+1 = 8 (floor gives 7)
    else:
        nodes.append(helper.make_node("MaxPool", [last], ["p"], name="pool", kernel_shape=[4, 4], strides=[4, 4]))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1))
    fin = 4 * 8 * 8 if variant == "maxpool_ceil" else 4 * 7 * 7
    nodes.append(helper.make_node("Gemm", ["f", init("fc.weight", 10, fin), init("fc.bias", 10)], ["logits"],
                                  name="fc", transB=1))
    graph = helper.make_graph(nodes, "nudge_hostile_" + variant, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nudge tools/onnx/make_fixtures.py")
    model.ir_version = 7  # what torch 1.13 writes for opset 13
    return model


HOSTILE_FILES = [
    ("valid_base", "The control: the base graph every hostile file is built from (conv1 3x3 pad 1, relu1, "
     "MaxPool 4x4 stride 4, Flatten, Gemm transB=1). nudge must ACCEPT it; each file below differs in one place."),
    ("unknown_op", "A LeakyRelu (alpha 0.1) in place of relu1. Refuse: node 'leaky1', op LeakyRelu is not supported."),
    ("branch", "A residual block: relu1's output feeds conv2 and the Add 'residual_add' (Add of two computed "
     "tensors, not a bias). Refuse: node 'residual_add' (op Add) joins two branches / the graph is not a chain "
     "(or: value 'r1' has two consumers)."),
    ("conv_group", "conv2 has group=2 (weight [4,2,3,3]). Refuse: node 'conv2', op Conv, attribute group=2 "
     "(only group=1)."),
    ("dilated", "conv2 has dilations=[2,2] (pads [2,2,2,2]). Refuse: node 'conv2', op Conv, attribute "
     "dilations=[2,2] (only 1)."),
    ("avgpool_pad", "AveragePool 4x4 stride 4 with pads=[1,1,1,1] (count_include_pad defaults to 0, so border "
     "windows divide by fewer than 16). Refuse: node 'pool', op AveragePool, attribute pads (no padding)."),
    ("maxpool_ceil", "MaxPool 3x3 stride 4 with ceil_mode=1 (8x8 output instead of 7x7). Refuse (or support "
     "exactly): node 'pool', op MaxPool, attribute ceil_mode=1. torch 1.13 writes ceil_mode=0 explicitly."),
    ("bn_after_relu", "A BatchNormalization after relu1 (not directly after a Conv or Gemm, so it cannot be "
     "folded). Refuse: node 'bn_after_relu', op BatchNormalization, input from Relu."),
    ("truncated", "The first 100 bytes of valid_base.onnx. Refuse: not a complete/parsable ONNX model (protobuf "
     "parse error or truncated field), without crashing or reading past the end."),
    ("dynamic_hw", "Input 'input' has shape [N,1,H,W] with symbolic H and W. Refuse: input 'input' dims 2 and 3 "
     "must be fixed (28x28)."),
    ("nchw_3channel", "Input [N,3,28,28], conv1 weight [4,3,3,3]: valid ONNX and not hostile as such, but a "
     "3-channel input; nudge should import it with C=3 or refuse naming input 'input' shape [N,3,28,28] "
     "(MNIST is 1x28x28)."),
]


def make_hostile():
    os.makedirs(HOSTILE, exist_ok=True)
    rows = []
    for name, what in HOSTILE_FILES:
        path = os.path.join(HOSTILE, name + ".onnx")
        if name == "truncated":
            with open(os.path.join(HOSTILE, "valid_base.onnx"), "rb") as f:
                data = f.read()[:100]
            with open(path, "wb") as f:
                f.write(data)
            try:
                onnx.load_from_string(data)
                checker = "parses (!)"
            except Exception as e:  # the point of the file
                checker = "does not parse (%s)" % type(e).__name__
        else:
            m = hostile_graph(name)
            onnx.checker.check_model(m)
            onnx.save(m, path)
            checker = "passes onnx.checker"
        rows.append((name, what, checker, os.path.getsize(path)))
    with open(os.path.join(HOSTILE, "README.md"), "w") as f:
        f.write("# Hostile ONNX files for nudge's import refusal tests\n\n"
                "Written by `tools/onnx/make_fixtures.py` with the onnx Python API. Each is a tiny sequential CNN "
                "(`valid_base.onnx`) with one change; every file but `truncated.onnx` passes `onnx.checker`, so a "
                "refusal is nudge's decision, not a malformed file. Expected: exit code 2 and a one-line message "
                "naming the node, op and attribute below.\n\n")
        for name, what, checker, size in rows:
            f.write("- `%s.onnx` (%d bytes; %s): %s\n" % (name, size, checker, what))
    return rows


# ---------------------------------------------------------------- main

def main():
    torch.set_num_threads(2)  # the VM has two cores, shared
    os.makedirs(OUT, exist_ok=True)
    x = fixed_inputs()
    summary = []
    built = {}
    for name, build, seed, opts, desc in FIXTURES:
        m, meta, logits = make_fixture(name, build, seed, opts, desc, x)
        built[name] = (m, logits)
        summary.append(meta)
    m, meta = make_dropout_identity(built["fastat_stride2"][0], x, built["fastat_stride2"][1])
    summary.append(meta)

    # What the request asked to check in the graphs, enforced so a different torch cannot
    # silently change what a fixture tests.
    def ops(name):
        return next(s["ops"] for s in summary if s["name"] == name)
    unf = next(s for s in summary if s["name"] == "padded_bn_unfused")
    assert [b["after"] for b in unf["batchnorm_nodes"]] == ["Conv", "Conv", "Gemm"], unf["batchnorm_nodes"]
    assert "MatMul" in ops("matmul_add") and "Add" in ops("matmul_add") and "Gemm" not in ops("matmul_add")
    pv = next(s for s in summary if s["name"] == "pool_variants")
    assert pv["reshape_nodes"] and pv["reshape_nodes"][0]["shape"] != "computed", pv["reshape_nodes"]
    pvc = next(s for s in summary if s["name"] == "pool_variants_shape_chain")
    assert pvc["reshape_nodes"] and pvc["reshape_nodes"][0]["shape"] == "computed", pvc["reshape_nodes"]

    for meta in summary:
        for k in ("batchnorm_nodes", "reshape_nodes"):
            if k in meta and not meta[k]:
                del meta[k]
        with open(os.path.join(OUT, meta["name"] + ".json"), "w") as f:
            f.write(dump_json(meta))

    hostile = make_hostile()

    total = 0
    for d in (OUT, HOSTILE):
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if os.path.isfile(p):
                size = os.path.getsize(p)
                total += size
                if size >= MAX_FILE:
                    raise SystemExit("%s is %d bytes, over the 300 KB limit" % (p, size))
    if total >= MAX_TOTAL:
        raise SystemExit("fixtures total %d bytes, over 2 MB" % total)

    for meta in summary:
        print("%-26s ops %s  numpy max abs %.2g rel %.2g" % (meta["name"], ",".join(meta["ops"]),
                                                              meta["numpy_eval_max_abs_diff"],
                                                              meta["numpy_eval_max_rel_diff"]))
        for b in meta.get("batchnorm_nodes", []):
            print("    BatchNormalization %s after %s" % (b["node"], b["after"]))
        for r in meta.get("reshape_nodes", []):
            print("    Reshape %s: %s" % (r["node"], r.get("value", r.get("chain_ops"))))
    for name, what, checker, size in hostile:
        print("hostile/%s.onnx %d bytes, %s" % (name, size, checker))
    print("total %d bytes in %s" % (total, OUT))


if __name__ == "__main__":
    main()
