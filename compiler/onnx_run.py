"""Run ONNX models with onnxruntime, the reference every claim is checked against."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from relugate.compiler.errors import RelugateError
from relugate.compiler.network import Network, TensorSpec

TOLERANCE = 1e-5
"""Outputs agree when ``|a - b| <= TOLERANCE * max(1, |a|)`` elementwise."""


def session(model: onnx.ModelProto | str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise RelugateError(
            "onnxruntime is needed for this check: pip install onnxruntime"
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_batch(model: onnx.ModelProto | str, spec: TensorSpec, x: np.ndarray) -> np.ndarray:
    """Outputs for a batch ``(n, *sample_shape)``, flattened to ``(n, -1)``.

    Models whose input is declared with a batch axis of 1 are fed one row at a
    time; exported models with a symbolic batch axis take the batch at once.
    """
    sess = session(model)
    inp = sess.get_inputs()[0]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape((-1, *spec.sample_shape))
    if spec.has_batch and not isinstance(inp.shape[0], int):
        return np.asarray(sess.run(None, {inp.name: x})[0]).reshape(len(x), -1)
    rows = [sess.run(None, {inp.name: row.reshape(spec.shape)})[0] for row in x]
    return np.stack([np.asarray(r).reshape(-1) for r in rows])


def run_network(net: Network, x: np.ndarray) -> np.ndarray:
    """Export ``net`` (batched where possible) and run it in onnxruntime."""
    from relugate.compiler.exporter import to_onnx

    batched = net.input.has_batch and net.output.has_batch
    model = to_onnx(net, batch="N" if batched else None)
    spec = TensorSpec(net.input.name, net.input.shape, net.input.has_batch, "N" if batched else 1)
    return run_batch(model, spec, x)


def mismatch(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-element error relative to ``max(1, |reference|)``."""
    return np.abs(reference - other) / np.maximum(1.0, np.abs(reference))
