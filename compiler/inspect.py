"""What ``relugate inspect`` reports about a model, as plain data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.frontend import graph_inputs, load_model
from relugate.compiler.importer import import_network


def _value_shape(vi: onnx.ValueInfoProto, batch_dim: int | str) -> list[int | str]:
    """The shape as the file spells it: the loader pinned a symbolic batch axis to 1."""
    dims: list[int | str] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in vi.type.tensor_type.shape.dim
    ]
    if len(dims) >= 2 and dims[0] == 1:
        dims[0] = batch_dim
    return dims


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Raw graph facts, plus the normalized layers when the model is supported.

    Raises ``ModelError`` for files that cannot be read; an unsupported model is
    reported (``supported: False`` and the reason), not raised.
    """
    loaded = load_model(path)
    graph = loaded.model.graph
    info: dict[str, Any] = {
        "path": str(path),
        "sha256": loaded.sha256,
        "opset": loaded.original_opset,
        "notes": list(loaded.notes),
        "inputs": [
            {"name": vi.name, "shape": _value_shape(vi, loaded.batch_dim)}
            for vi in graph_inputs(loaded.model)
        ],
        "outputs": [
            {"name": vi.name, "shape": _value_shape(vi, loaded.batch_dim)} for vi in graph.output
        ],
        "ops": dict(Counter(node.op_type for node in graph.node)),
        "nodes": len(graph.node),
        "onnx_params": int(sum(np.prod(init.dims, dtype=np.int64) for init in graph.initializer)),
    }
    try:
        net = import_network(loaded)
    except UnsupportedModel as exc:
        info.update(
            supported=False, reason=str(exc), unsupported_nodes=[list(n) for n in exc.nodes]
        )
        return info
    info.update(supported=True, reason=None, stats=net.stats(), layers=net.summary())
    return info
