"""Hidden-layer gates as ONNX: a clamp on one ReLU's output, and the pieces of the
graph the proof and the design need.

A cut is the output tensor of a ``Relu`` node of the compiled (chain) core that
everything after it reads alone: every later node reads only that tensor,
tensors made after it, and initializers.  At a cut the gate is

    h' = Min(Max(h, lo), hi)     # nodes relugate_gate/hidden/{max,min}

with float32 constants ``lo, hi`` of the tensor's sample shape (broadcast over
the batch); every consumer of ``h`` reads ``h'`` instead.  Min and Max are exact
in float32, so ``lo <= h' <= hi`` holds bit for bit.  ``tail_model`` is the part
after the cut (its input is the cut tensor), ``probe_model`` the core with the
cut tensor as a second output (to read hidden values in onnxruntime).

Telemetry: the runtime counts a gate firing where the output differs from
``<out>_ungated`` (``compiler/backends/tvm.prepare`` exposes that tensor).  With
``ungated`` (the default) the nodes after the cut are copied once more, reading
the unclamped ``h`` and writing ``<out>_ungated`` (nodes
``relugate_gate/hidden/ungated/...``, sharing the weights), at the end of the
graph: the cost of the tail once more (one Gemm for the last hidden layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relugate.compiler.errors import BadSpec, BundleError

HIDDEN = "relugate_gate/hidden/"
UNGATED = "_ungated"
"""Suffix of the ungated output's copy (``gates_onnx.UNGATED_SUFFIX``: the runtime counts
gate firings by comparing it with the output)."""


@dataclass(frozen=True)
class Cut:
    """A place for a hidden gate: ``index`` among the cuts, the ReLU output ``tensor``
    and its per-sample ``shape``; ``node`` is the position of its Relu in the graph."""

    index: int
    tensor: str
    node: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {
        v.name: [
            d.dim_param if d.HasField("dim_param") else d.dim_value
            for d in v.type.tensor_type.shape.dim
        ]
        for v in values
    }


def _reads_alone(model: onnx.ModelProto, at: int, tensor: str) -> bool:
    """True when nodes after ``at`` read only ``tensor``, later tensors and initializers."""
    known = {tensor} | {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node[at + 1 :]:
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


def cuts(model: onnx.ModelProto) -> list[Cut]:
    """The cuts of ``model`` in graph order (the last hidden layer last)."""
    shapes = _shapes(model)
    found: list[Cut] = []
    for at, node in enumerate(model.graph.node):
        if node.op_type != "Relu" or node.name.startswith(HIDDEN):
            continue
        tensor = node.output[0]
        dims = shapes.get(tensor)
        if dims is None or len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
            continue
        if _reads_alone(model, at, tensor):
            shape = tuple(int(d) for d in dims[1:])
            found.append(Cut(len(found), tensor, at, shape))
    return found


def find_cut(model: onnx.ModelProto, index: int) -> Cut:
    found = cuts(model)
    if not 0 <= index < len(found):
        raise BadSpec(
            f"hidden gate layer {index} does not exist: the network has {len(found)} "
            "hidden layers a gate can clamp (ReLU outputs numbered from 0)"
        )
    return found[index]


def _value(name: str, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def probe_model(model: onnx.ModelProto, cut: Cut) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the cut tensor."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    batch = _shapes(model)[cut.tensor][0]
    probe.graph.output.append(_value(cut.tensor, [batch, *cut.shape]))
    return probe


def tail_model(model: onnx.ModelProto, cut: Cut) -> onnx.ModelProto:
    """The network after the cut: input the cut tensor (batch axis ``N``)."""
    graph = model.graph
    nodes = list(graph.node[cut.node + 1 :])
    used = {name for node in nodes for name in node.input}
    inits = [i for i in graph.initializer if i.name in used]
    out = graph.output[0]
    dims = [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in out.type.tensor_type.shape.dim
    ]
    tail = helper.make_graph(
        nodes,
        "relugate_tail",
        [_value(cut.tensor, ["N", *cut.shape])],
        [_value(out.name, ["N", *dims[1:]])],
        inits,
    )
    made = helper.make_model(tail, opset_imports=list(model.opset_import))
    made.ir_version = model.ir_version
    onnx.checker.check_model(made, full_check=True)
    return made


def clamp_constants(
    lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The clamp's float32 constants ``(1, *shape)``; the bounds must be float32 values."""
    lo32 = np.asarray(lo, dtype=np.float32).reshape(1, *shape)
    hi32 = np.asarray(hi, dtype=np.float32).reshape(1, *shape)
    if not (
        np.array_equal(lo32.astype(np.float64).ravel(), np.asarray(lo, np.float64))
        and np.array_equal(hi32.astype(np.float64).ravel(), np.asarray(hi, np.float64))
    ):
        raise ValueError("internal: hidden gate bounds must be float32 values")
    return lo32, hi32


def _ungated_tail(graph: onnx.GraphProto, cut: Cut, clamped: str) -> list[onnx.NodeProto]:
    """Copies of the nodes after the cut reading the unclamped tensor, writing
    ``<out>_ungated``."""
    out = graph.output[0].name
    rename = {clamped: cut.tensor}
    copies = []
    for node in graph.node[cut.node + 1 :]:
        if node.name.startswith(HIDDEN):
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = HIDDEN + "ungated/" + node.name
        copy.input[:] = [rename.get(i, i) for i in node.input]
        for o in node.output:
            rename[o] = out + UNGATED if o == out else HIDDEN + "ungated/" + o
        copy.output[:] = [rename[o] for o in node.output]
        copies.append(copy)
    return copies


def append_clamp(
    model: onnx.ModelProto, cut: Cut, lo: np.ndarray, hi: np.ndarray, ungated: bool = True
) -> onnx.ModelProto:
    """A copy of ``model`` whose cut tensor is clamped into ``[lo, hi]`` (with the ungated
    output for telemetry, see the module doc)."""
    gated = onnx.ModelProto()
    gated.CopyFrom(model)
    graph = gated.graph
    clamped = HIDDEN + "min:out"
    for node in graph.node[cut.node + 1 :]:
        node.input[:] = [clamped if i == cut.tensor else i for i in node.input]
    lo32, hi32 = clamp_constants(lo, hi, cut.shape)
    graph.initializer.extend(
        [numpy_helper.from_array(lo32, HIDDEN + "lo"), numpy_helper.from_array(hi32, HIDDEN + "hi")]
    )
    nodes = [
        helper.make_node("Max", [cut.tensor, HIDDEN + "lo"], [HIDDEN + "max:out"], HIDDEN + "max"),
        helper.make_node("Min", [HIDDEN + "max:out", HIDDEN + "hi"], [clamped], HIDDEN + "min"),
    ]
    for offset, node in enumerate(nodes):
        graph.node.insert(cut.node + 1 + offset, node)
    if ungated:
        graph.node.extend(_ungated_tail(graph, cut, clamped))
    onnx.checker.check_model(gated, full_check=True)
    return gated


def strip_clamp(model: onnx.ModelProto) -> onnx.ModelProto:
    """The core without its hidden clamp (consumers read the ReLU output again)."""
    core = onnx.ModelProto()
    core.CopyFrom(model)
    graph = core.graph
    clamp = [n for n in graph.node if n.name.startswith(HIDDEN)]
    if not clamp:
        return core
    source = next((n.input[0] for n in clamp if n.name == HIDDEN + "max"), None)
    pair = [n for n in clamp if not n.name.startswith(HIDDEN + "ungated/")]
    if source is None or len(pair) != 2:
        raise BundleError("the model's hidden gate is not a Max/Min pair")
    keep = [n for n in graph.node if not n.name.startswith(HIDDEN)]
    for node in keep:
        node.input[:] = [source if i == HIDDEN + "min:out" else i for i in node.input]
        if any(name.startswith(HIDDEN) for name in node.input):
            raise BundleError(f"node {node.name!r} reads a hidden gate tensor")
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if not i.name.startswith(HIDDEN)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return core


def clamp_part(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The hidden gate's nodes and constants, in file order."""
    nodes = [n for n in model.graph.node if n.name.startswith(HIDDEN)]
    inits = [i for i in model.graph.initializer if i.name.startswith(HIDDEN)]
    return nodes, inits
