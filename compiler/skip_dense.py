"""``SkipDense``: ``Dense -> ReLU -> Dense`` with a linear skip path around the ReLU.

What ``passes/linear_skip`` makes of a Dense/ReLU/Dense block whose stably
active units were taken out of the ReLU: on the block's input ``x``

    y = outer(relu(inner(x))) + skip @ x

``inner`` keeps the units that still need their ReLU, ``outer`` reads them
(its bias absorbs the active units' constant), and ``skip`` (``n_out x n_in``)
is the active units' linear map ``W2[:, A] @ W1[A]``.

ONNX (``emit_skip_dense``): ``Gemm NAME/inner``, ``Relu NAME/relu``,
``Gemm NAME/outer``, ``Gemm NAME/skip`` on ``x`` and ``Add NAME``;
``collapse_skip_dense`` turns that subgraph back into one ``SkipDense`` node
for the importer, which ``skip_dense_from_node`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from relugate.compiler.layers import Dense, Layer, Shape


@dataclass(frozen=True, eq=False)
class SkipDense(Layer):
    inner: Dense = field(default=None, repr=False)  # type: ignore[assignment]
    outer: Dense = field(default=None, repr=False)  # type: ignore[assignment]
    skip: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)

    kind = "skip_dense"

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Dense) or not isinstance(self.outer, Dense):
            raise ValueError(f"skip_dense {self.name}: inner and outer must be Dense")
        if self.outer.n_in != self.inner.n_out:
            raise ValueError(f"skip_dense {self.name}: outer reads {self.outer.n_in} units")
        if self.skip.shape != (self.outer.n_out, self.inner.n_in):
            raise ValueError(f"skip_dense {self.name}: skip {self.skip.shape} does not fit")
        skip = np.ascontiguousarray(self.skip, dtype=np.float32)
        skip.setflags(write=False)
        object.__setattr__(self, "skip", skip)

    @property
    def n_in(self) -> int:
        return self.inner.n_in

    @property
    def n_out(self) -> int:
        return self.outer.n_out

    def out_shape(self, in_shape: Shape) -> Shape:
        if in_shape != (self.n_in,):
            raise ValueError(f"skip_dense {self.name} expects ({self.n_in},), got {in_shape}")
        return (self.n_out,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(self.inner.forward(x), 0)
        y: np.ndarray = self.outer.forward(h) + x @ self.skip.astype(x.dtype, copy=False).T
        return y

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        pre = self.inner.forward(x)
        g_h = np.where(pre > 0, self.outer.backward(pre, grad), 0).astype(grad.dtype)
        g: np.ndarray = self.inner.backward(x, g_h) + grad @ self.skip.astype(grad.dtype)
        return g

    def params(self) -> int:
        return self.inner.params() + self.outer.params() + int(self.skip.size)

    def flops(self, in_shape: Shape) -> int:
        units = self.inner.n_out
        inner = self.inner.flops(in_shape) + units
        return inner + self.outer.flops((units,)) + 2 * int(self.skip.size) + self.n_out

    def relu_units(self, in_shape: Shape) -> int:
        return self.inner.n_out

    def describe(self) -> str:
        return f"skip dense {self.n_in}->{self.inner.n_out} relu->{self.n_out} + linear skip"


# --- ONNX -----------------------------------------------------------------------------


def _op(
    graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], **attrs: object
) -> gs.Variable:
    out = gs.Variable(f"{name}:out")
    graph.layer(op=op, name=name, inputs=inputs, outputs=[out], attrs=attrs)
    return out


def _gemm(
    graph: gs.Graph, name: str, h: gs.Variable, w: np.ndarray, b: np.ndarray | None
) -> gs.Variable:
    inputs: list[gs.Tensor] = [h, gs.Constant(f"{name}/W", np.ascontiguousarray(w))]
    if b is not None:
        inputs.append(gs.Constant(f"{name}/b", np.ascontiguousarray(b)))
    return _op(graph, "Gemm", name, inputs, transB=1)


def emit_skip_dense(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, SkipDense)
    name = layer.name
    inner = _gemm(graph, f"{name}/inner", h, layer.inner.weight, layer.inner.bias)
    relu = _op(graph, "Relu", f"{name}/relu", [inner])
    outer = _gemm(graph, f"{name}/outer", relu, layer.outer.weight, layer.outer.bias)
    skip = _gemm(graph, f"{name}/skip", h, layer.skip, None)
    return _op(graph, "Add", name, [outer, skip])


def collapse_skip_dense(graph: gs.Graph) -> None:
    """Replace each subgraph ``emit_skip_dense`` wrote by one ``SkipDense`` node whose
    inputs are ``x`` and the four weights, the bias of ``outer`` last but one."""
    by_name = {node.name: node for node in graph.nodes}
    for name, skip in list(by_name.items()):
        if not name.endswith("/skip") or skip.op != "Gemm":
            continue
        root = name[: -len("/skip")]
        parts = [by_name.get(f"{root}/{p}") for p in ("inner", "relu", "outer")]
        add = by_name.get(root)
        if add is None or add.op != "Add" or any(p is None for p in parts):
            continue
        inner, relu, outer = parts
        assert inner is not None and relu is not None and outer is not None
        if inner.inputs[0] is not skip.inputs[0]:
            continue
        weights = [inner.inputs[1], inner.inputs[2], outer.inputs[1], outer.inputs[2]]
        node = gs.Node(
            "SkipDense", root, {}, [skip.inputs[0], *weights, skip.inputs[1]], [add.outputs[0]]
        )
        for n in (inner, relu, outer, skip, add):
            n.outputs.clear()
            n.inputs.clear()
        graph.nodes.append(node)
    graph.cleanup().toposort()


def skip_dense_from_node(name: str, values: list[np.ndarray]) -> SkipDense:
    """The layer of a ``SkipDense`` node given its constant inputs (W1, b1, W2, b2, M)."""
    w1, b1, w2, b2, m = values
    return SkipDense(
        name,
        inner=Dense(f"{name}/inner", weight=w1, bias=b1),
        outer=Dense(f"{name}/outer", weight=w2, bias=b2),
        skip=m,
    )
