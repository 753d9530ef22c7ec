"""ONNX for a ``MaxTree``: Gather / Sub / Relu / Add / Concat on the flattened tensor.

``buf`` starts as one Gather of the input's values (the constant zero, when
used, is one Pad column at its end); each level gathers its pairs' two sides,
computes ``b + Relu(a - b)`` and concatenates the results onto ``buf``; one
last Gather picks the outputs and a Reshape restores the pooled shape.  The
graph's Relu elements are exactly the tree's pairs.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from relugate.compiler.layers import Layer
from relugate.compiler.max_tree import MaxTree


def _op(
    graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], **attrs: object
) -> gs.Variable:
    out = gs.Variable(f"{name}:out")
    graph.layer(op=op, name=name, inputs=inputs, outputs=[out], attrs=attrs)
    return out


def _ints(name: str, values: np.ndarray | list[int]) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(values, dtype=np.int64))


def buffer_order(tree: MaxTree) -> tuple[np.ndarray, np.ndarray, bool]:
    """(input indices gathered, map from the tree's buffer index to the emitted one,
    whether a zero column follows them)."""
    real = tree.src != tree.n_in
    zero = bool((~real).any())
    k = int(real.sum())
    head = np.where(real, np.cumsum(real) - 1, k)
    extra = tree.buffer_sizes()[-1] - tree.src.size
    shift = k + int(zero)
    return tree.src[real], np.concatenate([head, shift + np.arange(extra)]), zero


def _gather_rows(graph: gs.Graph, flat: gs.Variable, idx: np.ndarray, name: str) -> gs.Variable:
    """``flat[:, idx]`` as GatherElements (onnxruntime's Gather copies one element at a
    time along axis 1, 5x slower at batch 64), then transposed to ``(len(idx), N)``."""
    batch = _op(graph, "Shape", f"{name}/shape0", [flat])
    batch = _op(
        graph, "Slice", f"{name}/batch", [batch, _ints(f"{name}/b0", [0]), _ints(f"{name}/b1", [1])]
    )
    size = _op(graph, "Concat", f"{name}/size", [batch, _ints(f"{name}/k", [len(idx)])], axis=0)
    full = _op(graph, "Expand", f"{name}/expand", [_ints(f"{name}/src", idx[None, :]), size])
    rows = _op(graph, "GatherElements", f"{name}/gather", [flat, full], axis=1)
    return _op(graph, "Transpose", f"{name}/rows", [rows], perm=[1, 0])


def emit_max_tree(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    """The buffer is kept value-major, ``(values, N)``: each Gather then copies whole rows."""
    assert isinstance(layer, MaxTree)
    name = layer.name
    gathered, remap, zero = buffer_order(layer)
    flat = _op(graph, "Flatten", f"{name}/flatten", [h], axis=1)
    buf = _gather_rows(graph, flat, gathered, name)
    if zero:
        pads = _ints(f"{name}/pads", np.array([0, 0, 1, 0]))
        buf = _op(graph, "Pad", f"{name}/zero", [buf, pads])
    for level, (a, b) in enumerate(layer.pairs):
        tag = f"{name}/l{level}"
        hi = _op(graph, "Gather", f"{tag}/a", [buf, _ints(f"{tag}/ia", remap[a])], axis=0)
        lo = _op(graph, "Gather", f"{tag}/b", [buf, _ints(f"{tag}/ib", remap[b])], axis=0)
        diff = _op(graph, "Sub", f"{tag}/sub", [hi, lo])
        top = _op(graph, "Add", f"{tag}/add", [lo, _op(graph, "Relu", f"{tag}/relu", [diff])])
        buf = _op(graph, "Concat", f"{tag}/concat", [buf, top], axis=0)
    y = _op(graph, "Gather", f"{name}/pick", [buf, _ints(f"{name}/ip", remap[layer.pick])], axis=0)
    y = _op(graph, "Transpose", f"{name}/samples", [y], perm=[1, 0])
    shape = _ints(f"{name}/shape", np.array([0, *layer.out]))
    return _op(graph, "Reshape", name, [y, shape])


# --- reading it back (importer) ------------------------------------------------------


def _const_of(node: gs.Node, index: int) -> np.ndarray:
    tensor = node.inputs[index]
    assert isinstance(tensor, gs.Constant), f"{node.name}: input {index} is not a constant"
    return np.asarray(tensor.values)


def collapse_max_trees(graph: gs.Graph) -> None:
    """Replace each subgraph ``emit_max_tree`` wrote (nodes ``NAME/...`` and the Reshape
    ``NAME``) by one ``MaxTree`` node carrying its index arrays, for the importer."""
    by_name = {node.name: node for node in graph.nodes}
    for name, flatten in list(by_name.items()):
        if not name.endswith("/flatten") or flatten.op != "Flatten":
            continue
        root = name[: -len("/flatten")]
        reshape = by_name.get(root)
        if reshape is None or reshape.op != "Reshape" or f"{root}/gather" not in by_name:
            continue
        attrs: dict[str, object] = {
            "src": _const_of(by_name[f"{root}/expand"], 0).reshape(-1).tolist(),
            "zero": int(f"{root}/zero" in by_name),
            "pick": _const_of(by_name[f"{root}/pick"], 1).tolist(),
            "out": _const_of(reshape, 1)[1:].tolist(),
        }
        level = 0
        while f"{root}/l{level}/a" in by_name:
            attrs[f"a{level}"] = _const_of(by_name[f"{root}/l{level}/a"], 1).tolist()
            attrs[f"b{level}"] = _const_of(by_name[f"{root}/l{level}/b"], 1).tolist()
            level += 1
        attrs["levels"] = level
        body = [n for n in graph.nodes if n.name.startswith(f"{root}/")]
        node = gs.Node("MaxTree", root, attrs, [flatten.inputs[0]], [reshape.outputs[0]])
        for n in [*body, reshape]:
            n.outputs.clear()
            n.inputs.clear()
        graph.nodes.append(node)
    graph.cleanup().toposort()


def max_tree_from_node(node: gs.Node, n_in: int) -> MaxTree:
    """The ``MaxTree`` of a node ``collapse_max_trees`` made, on ``n_in`` input values."""
    a = node.attrs
    src = [*a["src"], *([n_in] if a["zero"] else [])]
    pairs = tuple(
        (np.array(a[f"a{i}"], dtype=np.int64), np.array(a[f"b{i}"], dtype=np.int64))
        for i in range(int(a["levels"]))
    )
    out = tuple(int(v) for v in a["out"])
    return MaxTree(
        node.name, n_in=n_in, out=out, src=np.array(src), pairs=pairs, pick=np.array(a["pick"])
    )
