"""Shared by the TVM backend and runtime tests: small models, bundles, the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from conftest import ROOT, make_model
from onnx import helper

from relugate.compiler.atomic import atomic_directory
from relugate.compiler.backends.tvm import Lowered, lower, prepare
from relugate.compiler.bundle import write_bundle
from relugate.compiler.onnx_run import TOLERANCE, mismatch, session

COLLISION = ROOT / "examples" / "collision.onnx"
COLLISION_BOX = {"lo": [5.0, 10.0, 10.0], "hi": [15.0, 30.0, 40.0]}


def collision() -> onnx.ModelProto:
    return onnx.load(str(COLLISION))


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """Conv(4, 3x3, pad 1) -> Relu -> Conv(4, 3x3, stride 2) -> Relu -> Flatten -> Gemm(5)."""
    rng = np.random.default_rng(seed)
    w = {
        "W0": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
        "b0": rng.normal(0, 0.1, 4).astype(np.float32),
        "W1": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 4).astype(np.float32),
        "W2": rng.normal(0, 0.3, (5, 36)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "W1", "b1"], ["c1"], name="conv1", strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], name="gemm", transB=1),
    ]
    return make_model(nodes, [("x", ["N", 1, 8, 8])], [("y", ["N", 5])], w)


def gated_model(threshold: float = 0.5) -> onnx.ModelProto:
    """A tiny net whose output passes a ``relugate_gate/`` node: ``y = min(y_ungated, t)``.

    Shaped like the gates ``compiler/gates_onnx.py`` appends (the core writes
    ``y_ungated``, nodes named ``relugate_gate/...`` write ``y``), so a gate
    fires exactly on the rows where some ``y_ungated`` exceeds ``threshold``.
    """
    rng = np.random.default_rng(1)
    w = {
        "W": rng.normal(0, 1, (3, 2)).astype(np.float32),
        "b": np.zeros(3, np.float32),
        "relugate_gate/t": np.full(3, threshold, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm", transB=1),
        helper.make_node("Relu", ["h"], ["y_ungated"], name="relu"),
        helper.make_node("Min", ["y_ungated", "relugate_gate/t"], ["y"], name="relugate_gate/s0"),
    ]
    return make_model(nodes, [("x", ["N", 2])], [("y", ["N", 3])], w)


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for the batch ``x`` (the model given a symbolic batch axis)."""
    batched, specs = prepare(model, None)
    sess, name = session(batched), specs[0].name
    if not specs[0].has_batch:  # no batch axis: one row at a time
        out = np.stack([np.asarray(sess.run(None, {name: row})[0]) for row in x])
    else:
        out = np.asarray(sess.run(None, {name: x})[0])
    if len(specs) > 2:  # gated: the output is packed with the ungated one (and the
        out = out[: len(x)]  # firing counts): keep the first rows
    return out


def assert_close(want: np.ndarray, got: np.ndarray) -> None:
    assert want.shape == got.shape, (want.shape, got.shape)
    err = float(mismatch(want, got).max())
    assert err <= TOLERANCE, f"max relative error {err:.3g} > {TOLERANCE}"


def make_bundle(
    out: Path,
    model: onnx.ModelProto | None = None,
    lowered: Lowered | None = None,
    **options: Any,
) -> Path:
    """A bundle at ``out`` written through ``atomic_directory`` (collision net by default)."""
    model = model if model is not None else collision()
    lowered = lowered if lowered is not None else lower(model, "llvm")
    options.setdefault("domain", COLLISION_BOX if model.graph.input[0].name == "obs" else None)
    with atomic_directory(out) as tmp:
        write_bundle(tmp, lowered, model, **options)
    return out
