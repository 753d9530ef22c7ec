"""Trace a loaded ONNX graph into a ``Network`` of canonical layers.

The graph is walked in topological order.  A node whose inputs are all
constant is evaluated on the spot (constant folding, any op, by ONNX's
reference evaluator).  Every other node must read exactly one non-constant
tensor, the running activation, and is translated by its converter in
``onnx_ops.CONVERTERS``, the one registry of supported ops.  Anything else
(unsupported ops, branches, several activations) is collected and reported
in one ``UnsupportedModel`` error that names every offending node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.reference import ReferenceEvaluator

from relugate.compiler.errors import ModelError, UnsupportedModel
from relugate.compiler.frontend import LoadedModel, graph_inputs, onnx_opset
from relugate.compiler.layers import Layer, Reshape, Shape
from relugate.compiler.max_tree_onnx import collapse_max_trees
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_ops import CONVERTERS, SHAPE_OPS
from relugate.compiler.skip_dense import collapse_skip_dense


@dataclass
class Tracer:
    """State of the walk: constants known so far and the running activation."""

    consts: dict[str, np.ndarray]
    act: str
    sample: Shape
    has_batch: bool
    opset: int
    layers: list[Layer] = field(default_factory=list)
    seen: dict[str, Shape] = field(default_factory=dict)  # full shape of every activation so far

    @property
    def full(self) -> Shape:
        return (1, *self.sample) if self.has_batch else self.sample

    def emit(self, layer: Layer) -> None:
        try:
            self.sample = layer.out_shape(self.sample)
        except ValueError as exc:  # shapes ONNX shape inference let through
            raise ModelError(f"node {layer.name!r}: {exc} (activation {self.full})") from exc
        self.layers.append(layer)

    def relayout(self, name: str, out_full: Shape) -> None:
        """Move to a new full shape holding the same elements (Reshape, Flatten, Squeeze...)."""
        if self.has_batch and len(out_full) >= 1 and out_full[0] == 1:
            sample = tuple(out_full[1:])
        else:
            sample, self.has_batch = tuple(out_full), False
        if sample != self.sample:
            self.emit(Reshape(name, shape=sample))


def import_network(loaded: LoadedModel) -> Network:
    """The canonical ``Network`` of a model returned by ``frontend.load_model``."""
    graph = gs.import_onnx(loaded.model)
    graph.toposort()
    _name_nodes(graph)
    collapse_max_trees(graph)  # relugate's own MaxTree subgraphs, back into one node
    collapse_skip_dense(graph)  # and its SkipDense subgraphs
    const_names = _constant_tensors(graph)
    _refuse_unsupported(graph, const_names)
    tracer = _start(loaded, graph)
    inferred = _inferred_shapes(loaded.model)
    graph_outputs = {o.name for o in graph.outputs}
    for node in graph.nodes:
        _visit(node, tracer, const_names, inferred, graph_outputs)
    return _finish(loaded, graph, tracer)


def _name_nodes(graph: gs.Graph) -> None:
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def _constant_tensors(graph: gs.Graph) -> set[str]:
    """Names of tensors whose value is fixed: weights, and whatever depends only on them."""
    const = {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        live = [t for t in node.inputs if t.name and t.name not in const]
        if not live or node.op in SHAPE_OPS:
            const.update(t.name for t in node.outputs)
    return const


def _refuse_unsupported(graph: gs.Graph, const: set[str]) -> None:
    bad = [
        (node.name, node.op)
        for node in graph.nodes
        if node.op not in CONVERTERS
        and node.op not in SHAPE_OPS
        and any(t.name and t.name not in const for t in node.inputs)
    ]
    if bad:
        supported = ", ".join(sorted(CONVERTERS))
        raise UnsupportedModel(
            f"the model uses {len(bad)} node(s) relugate cannot compile "
            f"(supported ops: {supported}):",
            bad,
        )


def _start(loaded: LoadedModel, graph: gs.Graph) -> Tracer:
    (vi,) = graph_inputs(loaded.model)
    shape = tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim)
    has_batch = len(shape) >= 2 and shape[0] == 1
    if len(shape) >= 2 and shape[0] != 1:
        raise UnsupportedModel(
            f"input {vi.name!r} has a fixed batch of {shape[0]}; relugate needs axis 0 to be "
            "1 or symbolic (one sample per row)"
        )
    sample = shape[1:] if has_batch else shape
    consts = {
        name: np.asarray(t.values)
        for name, t in graph.tensors().items()
        if isinstance(t, gs.Constant)
    }
    tracer = Tracer(consts, vi.name, sample, has_batch, onnx_opset(loaded.model))
    tracer.seen[vi.name] = tracer.full
    return tracer


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    shapes = {}
    for vi in [*model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _visit(
    node: gs.Node, t: Tracer, const: set[str], inferred: dict[str, Shape], outputs: set[str]
) -> None:
    live = [x.name for x in node.inputs if x.name and x.name not in const]
    if not live or node.op in SHAPE_OPS:
        _fold(node, t)
        return
    if live != [t.act] or len(set(live)) != 1:
        raise UnsupportedModel(
            "relugate compiles single-path networks; this node reads "
            f"{sorted(set(live))} while the running activation is {t.act!r}:",
            [(node.name, node.op)],
        )
    used_outputs = [o for o in node.outputs[1:] if o.outputs or o.name in outputs]
    if used_outputs:
        raise UnsupportedModel(
            f"extra outputs {[o.name for o in used_outputs]} are used; "
            "only the first is supported:",
            [(node.name, node.op)],
        )
    CONVERTERS[node.op](node, t)
    t.act = node.outputs[0].name
    t.seen[t.act] = t.full
    expected = inferred.get(t.act)
    if expected is not None and expected != t.full:
        raise ModelError(
            f"internal check failed at node {node.name!r} ({node.op}): relugate computed shape "
            f"{t.full}, ONNX shape inference says {expected}"
        )


def _fold(node: gs.Node, t: Tracer) -> None:
    """Evaluate a node whose value does not depend on the input."""
    source = node.inputs[0].name if node.inputs else ""
    if node.op in SHAPE_OPS and source in t.seen:  # Shape may read an earlier activation
        values = [SHAPE_OPS[node.op](np.array(t.seen[source], dtype=np.int64), node.attrs)]
    else:
        values = _evaluate(node, t)
    for out, value in zip(node.outputs, values, strict=False):
        t.consts[out.name] = np.asarray(value)


def _evaluate(node: gs.Node, t: Tracer) -> list[Any]:
    inputs = [x.name for x in node.inputs]
    feeds = {name: t.consts[name] for name in inputs if name}
    proto = onnx.helper.make_node(
        node.op,
        inputs,
        [o.name for o in node.outputs],
        name=node.name,
        domain=node.domain or "",
        **{k: _attr_value(v) for k, v in node.attrs.items()},
    )
    try:
        evaluator = ReferenceEvaluator(proto, opsets={"": t.opset})
        return list(evaluator.run(None, feeds))
    except Exception as exc:
        raise UnsupportedModel(
            f"cannot fold the constant node ({exc.__class__.__name__}: {exc}):",
            [(node.name, node.op)],
        ) from exc


def _attr_value(value: Any) -> Any:
    if isinstance(value, gs.Constant):
        return onnx.numpy_helper.from_array(np.asarray(value.values))
    return value


def _finish(loaded: LoadedModel, graph: gs.Graph, t: Tracer) -> Network:
    (out,) = graph.outputs
    if out.name != t.act:
        raise UnsupportedModel(
            f"the graph output {out.name!r} is not the end of the single path (ends at {t.act!r})"
        )
    (vi,) = graph_inputs(loaded.model)
    in_shape = tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim)
    in_has_batch = len(in_shape) >= 2 and in_shape[0] == 1
    net_in = TensorSpec(vi.name, in_shape, in_has_batch, loaded.batch_dim)
    net_out = TensorSpec(out.name, t.full, t.has_batch, loaded.batch_dim)
    return Network(net_in, net_out, tuple(t.layers))
