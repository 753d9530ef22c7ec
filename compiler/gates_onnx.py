"""Output gates as ONNX: appended after the network, stripped for checking.

The network's output tensor ``<out>`` is renamed ``<out>_ungated``; nodes named
``relugate_gate/...`` (opset 17, float32 constants) read it and the model
input and write ``<out>`` again, so names and shapes stay those of the
original.  Per distinct input box ``j`` (``x`` flattened to ``(N, n_in)``, by the
network's own ``Flatten`` where it has one):

    r_j = Relu(Gemm(x, [-I, I], [lo_j, -hi_j]))   # [lo - x, x - hi]^+: 0 exactly inside
    r_j = Relu(Max(Sub(lo_j, x), Sub(x, hi_j)))   # the same, for more than 16 inputs

and per stage ``s`` (in order; ``y`` is the output so far, ``(N, n_out)``):

    shift = Gemm(r_j, scale_s, c_s)      # c_s + M dist(x), column per row of the polytope
    t     = Gemm(y, C_s, shift)          # t_r -/+ delta (+/- M dist)
    T     = ReduceMax(t) | ReduceMin(t)  # gates with several rows only,
    t     = Gemm(T, ones, mask_s)        #   spread to (N, n_out): T at k, +-inf elsewhere
    y     = Min(y, t) | Max(y, t)

(One Gemm instead of two Subs and a Max, and Gemm instead of a broadcast Add:
onnxruntime's broadcasting kernels took 2-3x longer at batch 1024.)

A gate whose box holds the whole compile domain has no switch (see
``gate_design``): its stage is ``t = Gemm(y, C_s, c_s)`` without the box
nodes.  A stage is one gate with several rows, or several one-row gates that commute
(e.g. the nine ``Y_j <- min(Y_j, Y_c - delta)`` of an MNIST robustness
property): their thresholds then sit in column ``k`` of one Gemm, so nine
gates cost the four nodes of one.

Every shape keeps the batch axis, so the gated model runs on any batch size
the network does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relugate.compiler.errors import BundleError
from relugate.compiler.hidden_onnx import HIDDEN, strip_clamp
from relugate.passes.analysis.gate_design import GateSpec

PREFIX = "relugate_gate/"
UNGATED_SUFFIX = "_ungated"
GEMM_BOX_MAX_INPUTS = 16
"""Up to this many inputs the box distance is one Gemm + Relu (faster in onnxruntime
than two broadcast Subs and a Max); beyond, its identity matrix would cost more
than the network (784 inputs: 1.2M multiply-adds per sample), so Sub/Sub/Max/Relu."""


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value.type.tensor_type.shape.dim
    ]


def _data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: object) -> str:
        full = PREFIX + name
        self.inits.append(numpy_helper.from_array(np.asarray(value), name=full))
        return full

    def node(
        self, op: str, name: str, inputs: list[str], out: str | None = None, **attrs: Any
    ) -> str:
        output = out or PREFIX + name + ":out"
        self.nodes.append(helper.make_node(op, inputs, [output], name=PREFIX + name, **attrs))
        return output


def _flatten(b: _Builder, tensor: str, dims: list[int | str], size: int, name: str) -> str:
    """``tensor`` as ``(N, size)``."""
    if len(dims) == 2:
        return tensor
    if len(dims) > 2:
        return b.node("Flatten", name, [tensor], axis=1)
    shape = b.const(f"{name}_shape", np.array([1, size], dtype=np.int64))
    return b.node("Reshape", name, [tensor, shape])


def _core_flatten(graph: onnx.GraphProto, x_name: str) -> str | None:
    """The output of a ``Flatten(axis=1)`` the network already applies to its input."""
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if node.op_type == "Flatten" and list(node.input) == [x_name] and axis == 1:
            return str(node.output[0])
    return None


def stages(gates: list[GateSpec]) -> list[list[GateSpec]]:
    """Gates grouped into stages that run as one: consecutive one-row gates on the same
    box and direction, on distinct outputs, none reading an output an earlier one of the
    group changes (so applying them at once equals applying them in order).  A gate with
    several rows is a stage of its own."""
    groups: list[list[GateSpec]] = []
    for gate in gates:
        last = groups[-1] if groups else []
        if (
            last
            and len(gate.b) == 1
            and len(last[0].b) == 1
            and gate.direction == last[0].direction
            and np.array_equal(gate.lo, last[0].lo)
            and np.array_equal(gate.hi, last[0].hi)
            and all(g.k != gate.k and gate.A[0, g.k] == 0.0 for g in last)
        ):
            last.append(gate)
        else:
            groups.append([gate])
    return groups


def box_constants(gate: GateSpec) -> tuple[np.ndarray, np.ndarray]:
    """``W, b`` of ``Gemm(x, W, b) = [lo - x, x - hi]``: each column one exact product by
    -+1 and one rounded addition, so its sign is right and it is 0 inside the box."""
    const = gate.constants()
    n_in = gate.lo.size
    W = np.concatenate([-np.eye(n_in), np.eye(n_in)], axis=1).astype(np.float32)
    return W, np.concatenate([const["lo"][0], -const["hi"][0]]).astype(np.float32)


def _sides(gate: GateSpec) -> int:
    """Rows of ``scale`` per input: 2 with the Gemm form of the box, 1 with Sub/Max."""
    return 2 if gate.lo.size <= GEMM_BOX_MAX_INPUTS else 1


def stage_constants(stage: list[GateSpec]) -> dict[str, np.ndarray]:
    """A stage's float32 constants.  One-row stages lay thresholds out per output:
    column ``k`` holds gate ``k``'s row, the other columns have bias +-inf, so their
    threshold is +-inf and ``Min``/``Max`` keeps them.  A gate with several rows
    reduces its rows, then spreads ``T`` with ``Gemm(T, ones, mask)`` (0 at k)."""
    first = stage[0].constants()
    if len(stage[0].b) > 1:
        return first | {
            "scale": np.concatenate([first["scale"]] * _sides(stage[0])),
            "ones": np.ones((1, stage[0].n_out), np.float32),
            "mask": first["mask"][0],
        }
    n_out, n_in = stage[0].n_out, stage[0].lo.size
    merged = {
        "scale": np.zeros((_sides(stage[0]) * n_in, n_out), np.float32),
        "C": np.zeros((n_out, n_out), np.float32),
        "c": np.full(n_out, np.inf * -stage[0].sign, np.float32),
    }
    for gate in stage:
        const = gate.constants()
        merged["scale"][:, gate.k] = np.concatenate([const["scale"][:, 0]] * _sides(gate))
        merged["C"][:, gate.k] = const["C"][:, 0]
        merged["c"][gate.k] = const["c"][0]
    return merged


def _box_nodes(b: _Builder, gate: GateSpec, x: str, j: int) -> str:
    """``(N, sides * n_in)``, nonnegative, exactly 0 inside the gate's box."""
    if _sides(gate) == 2:
        W, bias = box_constants(gate)
        sides = b.node(
            "Gemm", f"box{j}/sides", [x, b.const(f"box{j}/W", W), b.const(f"box{j}/b", bias)]
        )
        return b.node("Relu", f"box{j}/outside", [sides])
    const = gate.constants()
    below = b.node("Sub", f"box{j}/below", [b.const(f"box{j}/lo", const["lo"]), x])
    above = b.node("Sub", f"box{j}/above", [x, b.const(f"box{j}/hi", const["hi"])])
    outside = b.node("Max", f"box{j}/outside", [below, above])
    return b.node("Relu", f"box{j}/relu", [outside])


def gate_nodes(
    gates: list[GateSpec],
    x_flat: str | None,
    x: tuple[str, list[int | str]],
    y: tuple[str, list[int | str]],
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The gate subgraph reading the input ``x`` (or its flattened form ``x_flat``) and
    ``<y>_ungated``, writing ``y``."""
    b = _Builder()
    (x_name, x_dims), (y_name, y_dims) = x, y
    flat_x = x_flat
    cur = _flatten(b, y_name + UNGATED_SUFFIX, y_dims, gates[0].n_out, "y_flat")
    boxes: dict[bytes, str] = {}
    groups = stages(gates)
    for s, stage in enumerate(groups):
        const = stage_constants(stage)
        shift = b.const(f"s{s}/c", const["c"])
        if stage[0].switch:
            key = stage[0].lo.tobytes() + stage[0].hi.tobytes()
            if key not in boxes:
                flat_x = flat_x or _flatten(b, x_name, x_dims, int(gates[0].lo.size), "x_flat")
                boxes[key] = _box_nodes(b, stage[0], flat_x, len(boxes))
            scale = b.const(f"s{s}/scale", const["scale"])
            shift = b.node("Gemm", f"s{s}/shift", [boxes[key], scale, shift])
        t = b.node("Gemm", f"s{s}/t", [cur, b.const(f"s{s}/C", const["C"]), shift])
        direction = stage[0].direction
        if len(stage[0].b) > 1:
            op = "ReduceMax" if direction == "min" else "ReduceMin"
            T = b.node(op, f"s{s}/T", [t], axes=[1], keepdims=1)
            spread = [T, b.const(f"s{s}/ones", const["ones"]), b.const(f"s{s}/mask", const["mask"])]
            t = b.node("Gemm", f"s{s}/spread", spread)
        last = s == len(groups) - 1 and len(y_dims) == 2
        op = "Min" if direction == "min" else "Max"
        cur = b.node(op, f"s{s}/apply", [cur, t], out=y_name if last else None)
    if len(y_dims) != 2:
        target = [-1, *y_dims[1:]] if len(y_dims) > 2 else [int(d) for d in y_dims]
        shape = b.const("y_shape", np.array(target, dtype=np.int64))
        b.node("Reshape", "y_out", [cur, shape], out=y_name)
    return b.nodes, b.inits


def append_gates(model: onnx.ModelProto, gates: list[GateSpec]) -> onnx.ModelProto:
    """A copy of ``model`` with the gates after its output (the model itself if no gates)."""
    if not gates:
        return model
    gated = onnx.ModelProto()
    gated.CopyFrom(model)
    graph = gated.graph
    out = graph.output[0]
    ungated = out.name + UNGATED_SUFFIX
    _rename(graph, out.name, ungated)
    data = _data_input(gated)
    flat = _core_flatten(graph, data.name)
    nodes, inits = gate_nodes(gates, flat, (data.name, _dims(data)), (out.name, _dims(out)))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    onnx.checker.check_model(gated, full_check=True)
    return gated


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def gate_part(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The output gates' nodes and constants of a gated model, in file order (a hidden
    gate's are ``hidden_onnx.clamp_part``)."""
    nodes = [n for n in model.graph.node if _output_gate(n.name)]
    inits = [i for i in model.graph.initializer if _output_gate(i.name)]
    return nodes, inits


def _output_gate(name: str) -> bool:
    return name.startswith(PREFIX) and not name.startswith(HIDDEN)


def strip_gates(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ungated core: a hidden gate's clamp removed; output gate nodes removed,
    ``<out>_ungated`` renamed back to ``<out>``."""
    core = strip_clamp(model)
    graph = core.graph
    nodes, _ = gate_part(core)
    if not nodes:
        return core
    out = graph.output[0].name
    ungated = out + UNGATED_SUFFIX
    keep = [n for n in graph.node if not n.name.startswith(PREFIX)]
    if not any(ungated in n.output for n in keep):
        raise BundleError(f"the model has gate nodes but no tensor {ungated!r} to strip them from")
    for node in keep:
        if any(name.startswith(PREFIX) for name in [*node.input, *node.output]):
            raise BundleError(f"node {node.name!r} ({node.op_type}) reads or writes a gate tensor")
    del graph.node[:]
    graph.node.extend(keep)
    _rename(graph, ungated, out)
    inits = [i for i in graph.initializer if not i.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return core
