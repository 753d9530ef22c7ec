"""The registry of supported ONNX ops: one converter per op type.

A converter reads one node whose only non-constant input is the running
activation and emits canonical layers through the ``Tracer``.  Conditions a
converter cannot meet raise ``UnsupportedModel`` naming the node.  Nodes
whose inputs are all constant never reach a converter: the importer folds
them, whatever their op.
"""

from __future__ import annotations

from collections.abc import Callable
from math import ceil, prod
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.layers import Conv, Dense, MaxPool, Relu, Reshape, Scale, Shape, Transpose
from relugate.compiler.max_tree_onnx import max_tree_from_node
from relugate.compiler.skip_dense import skip_dense_from_node

if TYPE_CHECKING:
    from relugate.compiler.importer import Tracer

Converter = Callable[[gs.Node, "Tracer"], None]


def _refuse(node: gs.Node, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"{node.op} node {node.name!r}: {why}", [(node.name, node.op)])


def _const(node: gs.Node, t: Tracer, index: int) -> np.ndarray | None:
    """Value of input ``index`` if it is present and constant, else None."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    return t.consts.get(node.inputs[index].name)


def _need_const(node: gs.Node, t: Tracer, index: int, what: str) -> np.ndarray:
    value = _const(node, t, index)
    if value is None:
        raise _refuse(node, f"{what} (input {index}) must be a constant")
    return value


def _act_index(node: gs.Node, t: Tracer) -> int:
    return next(i for i, x in enumerate(node.inputs) if x.name == t.act)


# -- elementwise ---------------------------------------------------------
def _per_sample(node: gs.Node, t: Tracer, c: np.ndarray) -> np.ndarray:
    """A constant operand as an array that broadcasts against one sample."""
    full = t.full
    if np.broadcast_shapes(full, c.shape) != full:
        raise _refuse(node, f"constant of shape {c.shape} would grow the activation {full}")
    c = c.reshape((1,) * (len(full) - c.ndim) + c.shape)
    return c[0] if t.has_batch else c


def _binary(node: gs.Node, t: Tracer) -> None:
    side = _act_index(node, t)
    c = _per_sample(node, t, _need_const(node, t, 1 - side, "the other operand"))
    c = c.astype(np.float64)
    one, zero = np.ones((), np.float64), np.zeros((), np.float64)
    if node.op == "Add":
        mul, add = one, c
    elif node.op == "Sub":
        mul, add = (one, -c) if side == 0 else (-one, c)
    elif node.op == "Mul":
        mul, add = c, zero
    else:  # Div
        if side == 1:
            raise _refuse(node, "dividing by the activation is not piecewise linear")
        if np.any(c == 0):
            raise _refuse(node, "divides by zero")
        t.emit(Scale(node.name, mul=1.0 / c, add=zero, div=c))
        return
    t.emit(Scale(node.name, mul=mul, add=add))


def _neg(node: gs.Node, t: Tracer) -> None:
    t.emit(Scale(node.name, mul=-np.ones(()), add=np.zeros(())))


def _batchnorm(node: gs.Node, t: Tracer) -> None:
    if node.attrs.get("training_mode", 0):
        raise _refuse(node, "training_mode=1 is not inference")
    gamma, beta, mean, var = (
        _need_const(node, t, i, w).astype(np.float64)
        for i, w in enumerate(("scale", "bias", "mean", "var"), start=1)
    )
    eps = float(node.attrs.get("epsilon", 1e-5))
    mul = gamma / np.sqrt(var + eps)
    trailing = (1,) * (len(t.full) - 2)  # the channel axis is axis 1 of the full tensor
    add = _per_sample(node, t, (beta - mean * mul).reshape(-1, *trailing))
    t.emit(Scale(node.name, mul=_per_sample(node, t, mul.reshape(-1, *trailing)), add=add))


def _relu(node: gs.Node, t: Tracer) -> None:
    t.emit(Relu(node.name))


def _identity(node: gs.Node, t: Tracer) -> None:
    training = _const(node, t, 2)
    if node.op == "Dropout" and training is not None and bool(training):
        raise _refuse(node, "training_mode=True is not inference")


def _cast(node: gs.Node, t: Tracer) -> None:
    if int(node.attrs.get("to", 1)) != 1:
        raise _refuse(node, "only casts to FLOAT are supported")


# -- affine --------------------------------------------------------------
def _dense_on_vector(node: gs.Node, t: Tracer, weight: np.ndarray, bias: np.ndarray) -> None:
    """Emit ``Dense`` on an activation that is a vector (up to size-1 axes)."""
    n_in = weight.shape[1]
    s = t.sample
    if not s or s[-1] != n_in or prod(s[:-1]) != 1:
        raise _refuse(node, f"needs a vector of {n_in} values, the activation is {t.full}")
    if len(s) > 1:
        t.emit(Reshape(f"{node.name}/flat", shape=(n_in,)))
    t.emit(Dense(node.name, weight=weight, bias=bias))
    if len(s) > 1:
        t.emit(Reshape(f"{node.name}/unflat", shape=(*s[:-1], weight.shape[0])))


def _gemm(node: gs.Node, t: Tracer) -> None:
    if _act_index(node, t) != 0 or node.attrs.get("transA", 0):
        raise _refuse(node, "the activation must be the first operand, untransposed")
    b = _need_const(node, t, 1, "B").astype(np.float64)
    if b.ndim != 2:
        raise _refuse(node, f"B must be a matrix, got shape {b.shape}")
    weight = (b if node.attrs.get("transB", 0) else b.T) * float(node.attrs.get("alpha", 1.0))
    c = _const(node, t, 2)
    bias = np.zeros(weight.shape[0])
    if c is not None:
        bias = np.broadcast_to(c.astype(np.float64).reshape(-1), (weight.shape[0],))
        bias = bias * float(node.attrs.get("beta", 1.0))
    _dense_on_vector(node, t, weight, bias)


def _matmul(node: gs.Node, t: Tracer) -> None:
    side = _act_index(node, t)
    w = _need_const(node, t, 1 - side, "the weight").astype(np.float64)
    if w.ndim != 2:
        raise _refuse(node, f"weight must be a matrix, got shape {w.shape}")
    zeros = np.zeros(w.shape[1] if side == 0 else w.shape[0])
    if side == 0:
        _dense_on_vector(node, t, w.T, zeros)
        return
    # constant @ activation: the activation is a column vector without a batch axis
    s = t.sample
    if t.has_batch or not s or s[0] != w.shape[1] or prod(s[1:]) != 1:
        raise _refuse(node, f"constant @ activation needs a column of {w.shape[1]}, got {t.full}")
    if len(s) > 1:
        t.emit(Reshape(f"{node.name}/flat", shape=(w.shape[1],)))
    t.emit(Dense(node.name, weight=w, bias=zeros))
    if len(s) > 1:
        t.emit(Reshape(f"{node.name}/unflat", shape=(w.shape[0], *s[1:])))


def _explicit_pads(node: gs.Node, t: Tracer, kernel: Shape, strides: Shape, dil: Shape) -> Shape:
    rank = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return tuple(int(p) for p in node.attrs.get("pads", [0] * (2 * rank)))
    if auto == "VALID":
        return (0,) * (2 * rank)
    begin, end = [], []
    for i in range(rank):
        size = t.sample[1 + i]
        total = max(
            (ceil(size / strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size, 0
        )
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return (*begin, *end)


def _window_attrs(node: gs.Node, t: Tracer, kernel: Shape) -> tuple[Shape, Shape, Shape]:
    rank = len(kernel)
    if len(t.sample) != rank + 1 or not t.has_batch:
        raise _refuse(node, f"needs a batched {rank}-d feature map, the activation is {t.full}")
    if rank not in (1, 2):
        raise _refuse(node, f"{rank}-d windows are not supported (1-d and 2-d are)")
    strides = tuple(int(s) for s in node.attrs.get("strides", [1] * rank))
    dil = tuple(int(d) for d in node.attrs.get("dilations", [1] * rank))
    return strides, _explicit_pads(node, t, kernel, strides, dil), dil


def _check_ceil_mode(
    node: gs.Node, t: Tracer, kernel: Shape, strides: Shape, pads: Shape, dil: Shape
) -> None:
    if not node.attrs.get("ceil_mode", 0):
        return
    rank = len(kernel)
    for i in range(rank):
        span = t.sample[1 + i] + pads[i] + pads[i + rank] - dil[i] * (kernel[i] - 1) - 1
        if span % strides[i]:
            raise _refuse(
                node, "ceil_mode=1 changes the output shape here; export with ceil_mode=0"
            )


def _conv(node: gs.Node, t: Tracer) -> None:
    weight = _need_const(node, t, 1, "W")
    bias = _const(node, t, 2)
    kernel = tuple(int(k) for k in weight.shape[2:])
    strides, pads, dil = _window_attrs(node, t, kernel)
    bias = np.zeros(weight.shape[0]) if bias is None else bias
    group = int(node.attrs.get("group", 1))
    t.emit(
        Conv(
            node.name,
            weight=weight,
            bias=bias,
            strides=strides,
            pads=pads,
            dilations=dil,
            group=group,
        )
    )


def _maxpool(node: gs.Node, t: Tracer) -> None:
    kernel = tuple(int(k) for k in node.attrs["kernel_shape"])
    strides, pads, dil = _window_attrs(node, t, kernel)
    _check_ceil_mode(node, t, kernel, strides, pads, dil)
    t.emit(MaxPool(node.name, kernel=kernel, strides=strides, pads=pads, dilations=dil))


def _avgpool(node: gs.Node, t: Tracer) -> None:
    """Average pooling is linear: a depthwise convolution with weights 1/k."""
    channels = t.sample[0]
    if node.op == "GlobalAveragePool":
        if not t.has_batch or len(t.sample) not in (2, 3):
            raise _refuse(node, f"needs a batched 1-d or 2-d feature map, got {t.full}")
        kernel = tuple(t.sample[1:])
        strides, pads, dil = (1,) * len(kernel), (0,) * (2 * len(kernel)), (1,) * len(kernel)
    else:
        kernel = tuple(int(k) for k in node.attrs["kernel_shape"])
        strides, pads, dil = _window_attrs(node, t, kernel)
        _check_ceil_mode(node, t, kernel, strides, pads, dil)
        if any(pads) and not node.attrs.get("count_include_pad", 0):
            raise _refuse(node, "padding with count_include_pad=0 is not linear per window")
    weight = np.full((channels, 1, *kernel), 1.0 / prod(kernel))
    t.emit(
        Conv(
            node.name,
            weight=weight,
            bias=np.zeros(channels),
            strides=strides,
            pads=pads,
            dilations=dil,
            group=channels,
        )
    )


# -- layout --------------------------------------------------------------
def _flatten(node: gs.Node, t: Tracer) -> None:
    full = t.full
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(full) if axis < 0 else axis
    t.relayout(node.name, (prod(full[:axis]), prod(full[axis:])))


def _reshape(node: gs.Node, t: Tracer) -> None:
    target = _const(node, t, 1)
    raw = [int(v) for v in (target if target is not None else node.attrs.get("shape", []))]
    full = t.full
    allow_zero = bool(node.attrs.get("allowzero", 0))
    dims = [full[i] if d == 0 and not allow_zero else d for i, d in enumerate(raw)]
    if dims.count(-1) == 1:
        known = prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = prod(full) // max(known, 1)
    if prod(dims) != prod(full) or min(dims, default=1) < 1:
        raise _refuse(node, f"cannot reshape {full} to {raw}")
    t.relayout(node.name, tuple(dims))


def _axes(node: gs.Node, t: Tracer, rank: int) -> list[int] | None:
    value = _const(node, t, 1)
    axes = value if value is not None else node.attrs.get("axes")
    if axes is None:
        return None
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1))


def _squeeze(node: gs.Node, t: Tracer) -> None:
    full = t.full
    axes = _axes(node, t, len(full))
    drop = set(axes) if axes is not None else {i for i, d in enumerate(full) if d == 1}
    t.relayout(node.name, tuple(d for i, d in enumerate(full) if i not in drop))


def _unsqueeze(node: gs.Node, t: Tracer) -> None:
    full = list(t.full)
    added = len(_axes(node, t, 0) or [])  # axes index the output, which has this many more
    axes = _axes(node, t, len(full) + added)
    for a in axes or []:
        full.insert(a, 1)
    t.relayout(node.name, tuple(full))


def _transpose(node: gs.Node, t: Tracer) -> None:
    full = t.full
    perm = tuple(int(p) for p in node.attrs.get("perm", range(len(full) - 1, -1, -1)))
    if t.has_batch and perm[0] == 0:
        inner = tuple(p - 1 for p in perm[1:])
        if inner != tuple(range(len(inner))):
            t.emit(Transpose(node.name, perm=inner))
        return
    if t.has_batch:  # the size-1 batch axis moves: treat the whole tensor as one sample
        t.emit(Reshape(f"{node.name}/unbatch", shape=full))
        t.has_batch = False
    t.emit(Transpose(node.name, perm=perm))


def _shape_value(full: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    start, end = attrs.get("start", 0), attrs.get("end")
    return full[start:end]


def _size_value(full: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    return np.array(prod(int(v) for v in full), dtype=np.int64)


def _max_tree(node: gs.Node, t: Tracer) -> None:
    t.emit(max_tree_from_node(node, prod(t.sample)))


def _skip_dense(node: gs.Node, t: Tracer) -> None:
    names = ("W1", "b1", "W2", "b2", "skip")
    values = [_need_const(node, t, k + 1, what) for k, what in enumerate(names)]
    t.emit(skip_dense_from_node(node.name, values))


CONVERTERS: dict[str, Converter] = {
    "MaxTree": _max_tree,  # relugate's own, from importer.collapse_max_trees
    "SkipDense": _skip_dense,  # relugate's own, from importer.collapse_skip_dense
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "Neg": _neg,
    "BatchNormalization": _batchnorm,
    "Relu": _relu,
    "Identity": _identity,
    "Dropout": _identity,
    "Cast": _cast,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": _avgpool,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
}
"""Op types relugate compiles when they touch the activation."""

SHAPE_OPS: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "Shape": _shape_value,
    "Size": _size_value,
}
"""Ops whose result depends only on the (static) shape of their input: always folded."""
