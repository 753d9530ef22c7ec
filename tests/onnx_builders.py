"""Builders for small ONNX test models and the import round-trip check.

``chain`` strings ops into a single-path graph: each step names its op, its
inputs (``ACT`` is the running activation, arrays become initializers,
``None`` an absent optional input) and its attributes.  ``check_import``
loads a saved model through the frontend and importer and compares the
``Network`` and its export with onnxruntime on the original file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from conftest import make_model, save_model
from onnx import helper, shape_inference

from relugate.compiler.exporter import to_onnx
from relugate.compiler.frontend import LoadedModel, load_model
from relugate.compiler.importer import import_network
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_batch, session

ACT = "$act"
"""Placeholder for the running activation in a step's inputs."""

Input = str | np.ndarray | None


@dataclass
class Step:
    op: str
    inputs: Sequence[Input] = (ACT,)
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    outputs: int = 1


def step(op: str, *inputs: Input, name: str | None = None, **attrs: Any) -> Step:
    """A step whose inputs default to the activation alone."""
    return Step(op, inputs or (ACT,), attrs, name)


def f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.normal(0.0, scale, shape)).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def chain(
    in_shape: Sequence[int | str],
    steps: Sequence[Step],
    opset: int = 17,
    input_name: str = "x",
    output_name: str = "y",
) -> onnx.ModelProto:
    """A single-path model: every step reads the previous step's first output."""
    nodes, weights = [], {}
    act = input_name
    for i, s in enumerate(steps):
        names = []
        for j, value in enumerate(s.inputs):
            if value is None:
                names.append("")
            elif isinstance(value, str):
                names.append(act if value == ACT else value)
            else:
                key = f"c{i}_{j}"
                weights[key] = value
                names.append(key)
        out = output_name if i == len(steps) - 1 else f"t{i}"
        outs = [out] + [f"{out}_extra{k}" for k in range(1, s.outputs)]
        nodes.append(
            helper.make_node(s.op, names, outs, name=s.name or f"{s.op.lower()}{i}", **s.attrs)
        )
        act = out
    model = make_model(nodes, [(input_name, in_shape)], [(output_name, None)], weights, opset)
    inferred = shape_inference.infer_shapes(model, strict_mode=True)  # declare the output's shape
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def load_and_import(model: onnx.ModelProto, path: Path) -> tuple[LoadedModel, Network]:
    save_model(model, path)
    loaded = load_model(path)
    return loaded, import_network(loaded)


def assert_close(reference: np.ndarray, other: np.ndarray, what: str) -> None:
    assert reference.shape == other.shape, f"{what}: shape {other.shape} != {reference.shape}"
    err = float(mismatch(reference.astype(np.float64), other.astype(np.float64)).max())
    assert err <= TOLERANCE, f"{what}: relative error {err:.3g} > {TOLERANCE}"


def random_batch(net: Network, rows: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return f32(rng, rows, *net.input.sample_shape, scale=scale)


def check_import(
    model: onnx.ModelProto,
    tmp_path: Path,
    *,
    rows: int = 7,
    seed: int = 0,
    scale: float = 1.0,
    batched: bool | None = None,
) -> Network:
    """Import ``model`` and check it against onnxruntime three ways.

    (a) ``Network.forward`` in float32, (b) ``to_onnx(net)`` and, when the
    network keeps a batch axis end to end, (c) ``to_onnx(net, batch="N")``
    fed all ``rows`` at once.  ``batched`` asserts whether (c) applies.
    """
    path = tmp_path / "model.onnx"
    _, net = load_and_import(model, path)
    x = random_batch(net, rows, seed, scale)
    reference = run_rows(path, net, x)
    if net.input.batch_dim != 1 and net.output.has_batch:  # the original takes the batch at once
        assert_close(reference, run_batch(str(path), net.input, x), "original, whole batch")
    ours = net.forward(x, np.float32)
    assert ours.shape == (rows, *net.output.sample_shape)
    assert_close(reference, ours.reshape(rows, -1), "Network.forward")

    exported = to_onnx(net)
    onnx.checker.check_model(exported, full_check=True)
    assert_close(reference, run_batch(exported, net.input, x), "to_onnx(net)")

    separable = net.input.has_batch and net.output.has_batch
    if batched is not None:
        assert separable == batched, f"batch axis end to end: {separable}, expected {batched}"
    if separable:
        assert_close(reference, run_symbolic_batch(to_onnx(net, batch="N"), net, x), "batch N")
    return net


def run_rows(path: Path, net: Network, x: np.ndarray) -> np.ndarray:
    """The original model in onnxruntime, one sample at a time, flattened to ``(n, -1)``."""
    sess = session(str(path))
    (inp,) = sess.get_inputs()
    rows = [sess.run(None, {inp.name: row.reshape(net.input.shape)})[0] for row in x]
    return np.stack([np.asarray(r).reshape(-1) for r in rows])


def run_symbolic_batch(model: onnx.ModelProto, net: Network, x: np.ndarray) -> np.ndarray:
    """Feed the whole batch at once to a model whose input axis 0 is symbolic."""
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    (inp,) = sess.get_inputs()
    assert isinstance(inp.shape[0], str), f"axis 0 of the input is {inp.shape[0]!r}"
    (y,) = sess.run(None, {inp.name: np.ascontiguousarray(x, dtype=np.float32)})
    assert y.shape == (len(x), *net.output.sample_shape)
    return np.asarray(y).reshape(len(x), -1)
