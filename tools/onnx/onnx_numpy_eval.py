#!/usr/bin/env python3
"""A small, independent NumPy evaluator for the ONNX graphs nudge imports and exports.

Why it exists: onnxruntime is not packaged for Debian 12, and comparing nudge against
PyTorch alone would not tell us whether a mismatch lies in the ONNX file or in the
importer. This evaluator reads the ONNX graph itself (with the onnx package) and runs it
node by node in float64, so it is a third opinion on the same file: PyTorch (which wrote
the file), this script (which reads it) and nudge (which imports it) should agree.

It implements only the ops nudge's sequential CNNs use, plus the few helper ops PyTorch
emits around them (Constant, Shape, Gather, Unsqueeze, Concat for `x.view(x.size(0), -1)`;
Pad, constant mode, which torch 1.13 puts before every AveragePool of an nn.AvgPool2d with
count_include_pad=True, its default).
Anything else raises NotImplementedError naming the node, so it never guesses.

Library use:
    from onnx_numpy_eval import evaluate
    logits = evaluate("model.onnx", images)   # images: float array [N,C,H,W]

CLI:
    python3 tools/onnx/onnx_numpy_eval.py MODEL.onnx INPUTS.bin N [LOGITS.bin] [--raw]

INPUTS.bin holds N images, float32 little-endian, in the model's input shape [N,C,H,W].
It prints the output shape, the argmax per image (for N <= 32), and with LOGITS.bin
(float32 LE, [N,K]) the max absolute and relative difference; it exits 1 if the max
absolute difference exceeds --tol (default 1e-4).
"""

import argparse
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from numpy.lib.stride_tricks import sliding_window_view


# ---------------------------------------------------------------- attributes

def _attrs(node):
    """Node attributes as plain Python values (ints, floats, lists, strings, arrays)."""
    out = {}
    for a in node.attribute:
        out[a.name] = onnx.helper.get_attribute_value(a)
        if isinstance(out[a.name], bytes):
            out[a.name] = out[a.name].decode()
        elif isinstance(out[a.name], onnx.TensorProto):
            out[a.name] = numpy_helper.to_array(out[a.name])
    return out


def _where(node):
    return "node %r (op %s)" % (node.name or node.output[0], node.op_type)


# ---------------------------------------------------------------- windows

def _pool_geometry(size, k, s, pb, pe, d, ceil_mode):
    """Output length of one spatial axis and the extra end padding ceil_mode needs.

    ONNX: out = floor_or_ceil((size + pb + pe - ((k-1)*d+1)) / s) + 1. With ceil_mode a
    last window that would start entirely in the end padding is dropped (PyTorch's and
    onnxruntime's rule), so out never counts a window with no real or begin-pad element.
    """
    eff = (k - 1) * d + 1
    span = size + pb + pe - eff
    if span < 0:
        raise ValueError("kernel %d (dilation %d) larger than padded input %d" % (k, d, size + pb + pe))
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pb:
            out -= 1
    else:
        out = span // s + 1
    extra = max(0, (out - 1) * s + eff - (size + pb + pe))
    return out, extra


def _windows(x, kernel, strides, pads, dilations, ceil_mode, pad_value):
    """Sliding windows of x [N,C,H,W] -> [N,C,oH,oW,kH,kW] (a view where possible)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    pt, pl, pb, pr = pads  # ONNX order: [x1_begin, x2_begin, x1_end, x2_end] = [top, left, bottom, right]
    oh, eh = _pool_geometry(x.shape[2], kh, sh, pt, pb, dh, ceil_mode)
    ow, ew = _pool_geometry(x.shape[3], kw, sw, pl, pr, dw, ceil_mode)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)), constant_values=pad_value)
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    return win[:, :, :oh, :ow], (eh, ew)


def _spatial_attrs(node, a, kernel_from=None):
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("%s: auto_pad=%s" % (_where(node), a["auto_pad"]))
    kernel = list(a["kernel_shape"]) if "kernel_shape" in a else list(kernel_from)
    if len(kernel) != 2:
        raise NotImplementedError("%s: only 2-D spatial ops (kernel_shape %s)" % (_where(node), kernel))
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if a.get("auto_pad", "NOTSET") == "VALID":
        pads = [0, 0, 0, 0]
    dilations = list(a.get("dilations", [1, 1]))
    return kernel, strides, pads, dilations


# ---------------------------------------------------------------- ops

def _conv(node, a, x, w, b=None):
    kernel, strides, pads, dil = _spatial_attrs(node, a, kernel_from=w.shape[2:])
    g = int(a.get("group", 1))
    n, c = x.shape[:2]
    m = w.shape[0]
    if c != w.shape[1] * g or m % g:
        raise ValueError("%s: input channels %d, weight %s, group %d" % (_where(node), c, w.shape, g))
    win, _ = _windows(x, kernel, strides, pads, dil, False, 0.0)
    oh, ow = win.shape[2:4]
    cg, mg = c // g, m // g
    outs = []
    for gi in range(g):
        # im2col per group: rows (n, oh, ow), columns (c, kh, kw) to match w's layout.
        cols = win[:, gi * cg:(gi + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
        wg = w[gi * mg:(gi + 1) * mg].reshape(mg, -1)
        outs.append((cols @ wg.T).reshape(n, oh, ow, mg))
    y = np.concatenate(outs, axis=3).transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def _maxpool(node, a, x):
    if len(node.output) > 1 and node.output[1]:
        raise NotImplementedError("%s: the Indices output" % _where(node))
    kernel, strides, pads, dil = _spatial_attrs(node, a)
    win, _ = _windows(x, kernel, strides, pads, dil, int(a.get("ceil_mode", 0)), -np.inf)
    return win.max(axis=(4, 5))


def _avgpool(node, a, x):
    kernel, strides, pads, dil = _spatial_attrs(node, a)
    ceil = int(a.get("ceil_mode", 0))
    include = int(a.get("count_include_pad", 0))
    win, (eh, ew) = _windows(x, kernel, strides, pads, dil, ceil, 0.0)
    total = win.sum(axis=(4, 5))
    if pads == [0, 0, 0, 0] and eh == 0 and ew == 0:
        return total / (kernel[0] * kernel[1])
    # Divisor per window: the real elements, plus the explicit pads when count_include_pad=1;
    # the extra end region that ceil_mode adds never counts (PyTorch's semantics).
    pt, pl, pb, pr = pads
    h, w = x.shape[2:]
    mask = np.zeros((1, 1, pt + h + pb + eh, pl + w + pr + ew))
    if include:
        mask[:, :, :pt + h + pb, :pl + w + pr] = 1.0
    else:
        mask[:, :, pt:pt + h, pl:pl + w] = 1.0
    mwin = sliding_window_view(mask, ((kernel[0] - 1) * dil[0] + 1, (kernel[1] - 1) * dil[1] + 1), axis=(2, 3))
    mwin = mwin[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]][:, :, :total.shape[2], :total.shape[3]]
    return total / mwin.sum(axis=(4, 5))


def _batchnorm(node, a, x, scale, bias, mean, var):
    if len(node.output) > 1 and any(node.output[1:]):
        raise NotImplementedError("%s: training-mode outputs" % _where(node))
    eps = float(a.get("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + eps)
    return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


def _gemm(node, a, A, B, C=None):
    if int(a.get("transA", 0)):
        A = A.T
    if int(a.get("transB", 0)):
        B = B.T
    y = float(a.get("alpha", 1.0)) * (A @ B)
    if C is not None:
        y = y + float(a.get("beta", 1.0)) * C
    return y


def _reshape(node, a, x, shape):
    shape = [int(s) for s in shape]
    if int(a.get("allowzero", 0)) == 0:
        # 0 copies the input's dimension at that position.
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(node, a, x):
    axis = int(a.get("axis", 1))
    if axis < 0:
        axis += x.ndim
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _softmax_axis(node, a, opset):
    # Before opset 13 the default axis was 1 and the input was coerced to 2-D; the
    # graphs here are 2-D at the softmax, where both readings agree.
    return int(a.get("axis", -1 if opset >= 13 else 1))


def _softmax(node, a, x, opset):
    ax = _softmax_axis(node, a, opset)
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return e / e.sum(axis=ax, keepdims=True)


def _logsoftmax(node, a, x, opset):
    ax = _softmax_axis(node, a, opset)
    z = x - x.max(axis=ax, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=ax, keepdims=True))


def _constant(node, a):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if key.endswith("floats") or key.endswith("float"):
                return np.asarray(v, dtype=np.float64)
            if key.startswith("value_int"):
                return np.asarray(v, dtype=np.int64)
            return v
    raise NotImplementedError("%s: attribute %s" % (_where(node), sorted(a)))


def _pad(node, a, x, pads, value=None):
    # torch 1.13 writes nn.AvgPool2d (count_include_pad=True, the default) as Pad + AveragePool,
    # with a Pad of all-zero pads when the pooling has no padding.
    mode = a.get("mode", "constant")
    if mode != "constant":
        raise NotImplementedError("%s: mode=%s" % (_where(node), mode))
    pads = [int(p) for p in pads]
    r = x.ndim
    if len(pads) != 2 * r or min(pads) < 0:
        raise NotImplementedError("%s: pads %s for a rank-%d input" % (_where(node), pads, r))
    # ONNX order: all begins (axis 0..r-1), then all ends.
    width = [(pads[i], pads[i + r]) for i in range(r)]
    return np.pad(x, width, constant_values=0.0 if value is None else float(np.asarray(value)))


def _unsqueeze(node, a, x, axes=None, opset=13):
    axes = a.get("axes") if opset < 13 else axes
    out_rank = x.ndim + len(axes)
    for ax in sorted(int(v) % out_rank for v in axes):
        x = np.expand_dims(x, ax)
    return x


def _run_node(node, ins, opset):
    a = _attrs(node)
    op = node.op_type
    if op == "Conv":
        return _conv(node, a, *ins)
    if op == "Relu":
        return np.maximum(ins[0], 0.0)
    if op == "MaxPool":
        return _maxpool(node, a, ins[0])
    if op == "AveragePool":
        return _avgpool(node, a, ins[0])
    if op == "GlobalAveragePool":
        return ins[0].mean(axis=tuple(range(2, ins[0].ndim)), keepdims=True)
    if op == "BatchNormalization":
        return _batchnorm(node, a, *ins)
    if op == "Flatten":
        return _flatten(node, a, ins[0])
    if op == "Reshape":
        return _reshape(node, a, ins[0], ins[1])
    if op == "Gemm":
        return _gemm(node, a, *ins)
    if op == "MatMul":
        return ins[0] @ ins[1]
    if op == "Add":
        return ins[0] + ins[1]
    if op in ("Dropout", "Identity"):
        # Inference: Dropout passes its input through (a `training_mode` input of true is refused).
        if op == "Dropout" and len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2])):
            raise NotImplementedError("%s: training_mode=true" % _where(node))
        return ins[0]
    if op == "Softmax":
        return _softmax(node, a, ins[0], opset)
    if op == "LogSoftmax":
        return _logsoftmax(node, a, ins[0], opset)
    if op == "Pad":
        return _pad(node, a, *ins)
    if op == "Constant":
        return _constant(node, a)
    if op == "Shape":
        return np.asarray(ins[0].shape, dtype=np.int64)
    if op == "Gather":
        return np.take(ins[0], np.asarray(ins[1], dtype=np.int64), axis=int(a.get("axis", 0)))
    if op == "Unsqueeze":
        return _unsqueeze(node, a, *ins, opset=opset)
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in ins], axis=int(a["axis"]))
    raise NotImplementedError("%s: op not implemented by onnx_numpy_eval" % _where(node))


# ---------------------------------------------------------------- graph

def _opset(model):
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def run_graph(model, inputs):
    """Runs the whole graph on inputs (array [N,...]); returns {value name: array} for every value."""
    graph = model.graph
    opset = _opset(model)
    values = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        values[init.name] = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
    real_inputs = [i.name for i in graph.input if i.name not in values]
    if len(real_inputs) != 1:
        raise NotImplementedError("graph has %d non-initializer inputs %s, expected 1" % (len(real_inputs), real_inputs))
    values[real_inputs[0]] = np.asarray(inputs, dtype=np.float64)
    # ONNX requires nodes in topological order, so one pass suffices.
    for node in graph.node:
        ins = []
        for name in node.input:
            if name == "":
                ins.append(None)
            elif name not in values:
                raise ValueError("%s: input %r is not produced before it is used" % (_where(node), name))
            else:
                ins.append(values[name])
        # Trailing optional inputs that are absent are simply not passed.
        while ins and ins[-1] is None and node.op_type != "Dropout":
            ins.pop()
        out = _run_node(node, ins, opset)
        values[node.output[0]] = out
    return values


def final_layers(model):
    """(output name, pre-softmax name or None): the graph's single output, and if the node
    producing it is Softmax/LogSoftmax, that node's input."""
    if len(model.graph.output) != 1:
        raise NotImplementedError("graph has %d outputs, expected 1" % len(model.graph.output))
    out = model.graph.output[0].name
    for node in model.graph.node:
        if out in node.output and node.op_type in ("Softmax", "LogSoftmax"):
            return out, node.input[0]
    return out, None


def evaluate(model_path, inputs, strip_softmax=True):
    """Logits of the model at model_path (a path or a loaded ModelProto) for inputs [N,C,H,W].

    With strip_softmax (the default) a final Softmax/LogSoftmax is skipped and its input
    returned: nudge and the fixtures compare logits, i.e. what the last Linear layer outputs.
    Computed in float64; returns float64 [N,K].
    """
    model = onnx.load(model_path) if isinstance(model_path, str) else model_path
    out, pre = final_layers(model)
    values = run_graph(model, inputs)
    return values[pre] if (strip_softmax and pre is not None) else values[out]


def input_shape(model):
    """The single non-initializer input's shape: ints for static dims, strings for symbolic ones."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        return dims
    raise ValueError("graph has no input")


def diff(a, b):
    """(max abs diff, max rel diff) with the relative one measured against max(|b|, 1e-3)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = np.abs(a - b)
    return float(d.max()), float((d / np.maximum(np.abs(b), 1e-3)).max())


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an ONNX CNN with NumPy and compare with reference logits.")
    p.add_argument("model")
    p.add_argument("inputs", help="float32 LE images, [N,C,H,W] in the model's input shape")
    p.add_argument("n", type=int, help="number of images in INPUTS")
    p.add_argument("logits", nargs="?", help="optional float32 LE [N,K] logits to compare against")
    p.add_argument("--raw", action="store_true", help="keep a final Softmax/LogSoftmax (default: strip it)")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs diff accepted (exit 1 above it)")
    args = p.parse_args(argv)

    model = onnx.load(args.model)
    shape = input_shape(model)
    chw = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in chw):
        print("error: input shape %s has non-static C/H/W" % shape, file=sys.stderr)
        return 2
    x = np.fromfile(args.inputs, dtype="<f4")
    per = int(np.prod(chw))
    if x.size != args.n * per:
        print("error: %s holds %d floats, expected %d x %s = %d" % (args.inputs, x.size, args.n, chw, args.n * per),
              file=sys.stderr)
        return 2
    try:
        y = evaluate(model, x.reshape([args.n] + chw), strip_softmax=not args.raw)
    except (NotImplementedError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("output shape %s" % (list(y.shape),))
    if args.n <= 32:
        print("argmax %s" % y.argmax(axis=1).tolist())
    if args.logits:
        ref = np.fromfile(args.logits, dtype="<f4")
        if ref.size != y.size:
            print("error: %s holds %d floats, expected %d" % (args.logits, ref.size, y.size), file=sys.stderr)
            return 2
        mabs, mrel = diff(y, ref.reshape(y.shape))
        agree = int((y.argmax(axis=1) == ref.reshape(y.shape).argmax(axis=1)).sum())
        print("max abs diff %.3g, max rel diff %.3g, argmax agree %d/%d" % (mabs, mrel, agree, args.n))
        return 0 if mabs <= args.tol else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
