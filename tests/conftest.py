"""Shared fixtures: where the public benchmarks live, and small ONNX builders."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def benchmarks_dir() -> Path:
    """``../shared/benchmarks`` beside the project, or $RELUGATE_BENCHMARKS."""
    env = os.environ.get("RELUGATE_BENCHMARKS")
    return Path(env) if env else ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def benchmarks() -> Path:
    path = benchmarks_dir()
    if not path.is_dir():
        pytest.skip(f"public benchmarks not found at {path} (set RELUGATE_BENCHMARKS)")
    return path


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    outputs: Sequence[tuple[str, Sequence[int | str] | None]],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A small float32 ONNX model from nodes, (name, shape) inputs/outputs and weights."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, None if s is None else list(s))
            for n, s in outputs
        ],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def mlp_model(sizes: Sequence[int], seed: int = 0) -> onnx.ModelProto:
    """A Gemm/Relu MLP with input shape (1, sizes[0])."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], {}
    h = "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        weights[f"W{i}"] = rng.normal(0, 1 / np.sqrt(n_in), (n_out, n_in)).astype(np.float32)
        weights[f"b{i}"] = rng.normal(0, 0.1, n_out).astype(np.float32)
        nodes.append(
            helper.make_node("Gemm", [h, f"W{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}", transB=1)
        )
        h = f"g{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"], name=f"relu{i}"))
            h = f"r{i}"
    nodes[-1].output[0] = "y"
    return make_model(nodes, [("x", [1, sizes[0]])], [("y", [1, sizes[-1]])], weights)
