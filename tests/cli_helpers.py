"""Helpers for the CLI and frontend tests: models that exercise the passes or the
error paths, a VNN-LIB writer, and ways to run ``relugate`` as a user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from conftest import make_model
from onnx import helper
from typer.testing import CliRunner, Result

from relugate.compiler.cli import app

WIDE = {"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
"""Environment for CLI runs: rich wraps at 80 columns without it."""


def invoke(*args: str | Path) -> Result:
    """``relugate ARGS`` in-process; stdout and stderr come back separately."""
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def squash(text: str) -> str:
    """Text without whitespace: rich may wrap long messages anywhere."""
    return re.sub(r"\s+", "", text)


def says(text: str, *needles: str) -> bool:
    """Whether ``text`` holds every needle, ignoring line wrapping."""
    flat = squash(text)
    return all(squash(n) in flat for n in needles)


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert 'File "' not in text, text


def relugate_exe() -> Path:
    """The installed console script, beside the running interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("relugate")
    if beside.is_file():
        return beside
    found = shutil.which("relugate")
    assert found, "the relugate console script is not installed"
    return Path(found)


def run_exe(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **WIDE}
    return subprocess.run(
        [str(relugate_exe()), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def hidden_leftovers(parent: Path) -> list[str]:
    """Temporary or backup folders an atomic write may leave beside its target."""
    return sorted(p.name for p in parent.iterdir() if re.match(r"\..*\.(tmp|old)-", p.name))


# --- models -------------------------------------------------------------------


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0, 0.5, shape).astype(np.float32)


def affine_model(seed: int = 0) -> onnx.ModelProto:
    """x(1,4) -> normalize -> Gemm -> Relu -> Gemm -> Gemm: fold_scale, merge_affine change it."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"], name="norm_sub"),
        helper.make_node("Div", ["s", "std"], ["n"], name="norm_div"),
        helper.make_node("Gemm", ["n", "W0", "b0"], ["g0"], name="fc0", transB=1),
        helper.make_node("Relu", ["g0"], ["r0"], name="relu0"),
        helper.make_node("Gemm", ["r0", "W1", "b1"], ["g1"], name="fc1", transB=1),
        helper.make_node("Gemm", ["g1", "W2", "b2"], ["y"], name="fc2", transB=1),
    ]
    weights = {
        "mean": _w(rng, 4),
        "std": np.abs(_w(rng, 4)) + 1,
        "W0": _w(rng, 6, 4),
        "b0": _w(rng, 6),
        "W1": _w(rng, 3, 6),
        "b1": _w(rng, 3),
        "W2": _w(rng, 2, 3),
        "b2": _w(rng, 2),
    }
    return make_model(nodes, [("x", [1, 4])], [("y", [1, 2])], weights)


def unsupported_model() -> onnx.ModelProto:
    """A Gemm, then a Sigmoid and an LSTM (both unsupported), then a Flatten."""
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["g"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["g"], ["s"], name="sig"),
        helper.make_node("Reshape", ["s", "seq_shape"], ["seq"], name="to_seq"),
        helper.make_node("LSTM", ["seq", "Wl", "Rl"], ["h"], name="lstm", hidden_size=2),
        helper.make_node("Flatten", ["h"], ["y"], name="flat"),
    ]
    weights = {
        "W": np.ones((4, 3), np.float32),
        "seq_shape": np.array([1, 1, 4], np.int64),
        "Wl": np.ones((1, 8, 4), np.float32),
        "Rl": np.ones((1, 8, 2), np.float32),
    }
    return make_model(nodes, [("x", [1, 3])], [("y", [1, 2])], weights)


def write_vnnlib(
    path: Path, lo: Sequence[float], hi: Sequence[float], n_outputs: int, extra: str = ""
) -> Path:
    """A spec with input box [lo, hi] and unsafe set Y_0 >= Y_1 + 100 (plus ``extra``)."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        lines += [f"(assert (>= X_{i} {a}))", f"(assert (<= X_{i} {b}))"]
    lines.append("(assert (>= Y_0 (+ Y_1 100.0)))" if n_outputs > 1 else "(assert (>= Y_0 100))")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def ort_run(model: str | Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's output in onnxruntime, one row of ``x`` at a time (batch axis 1)."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = [session.run(None, {name: row[None].astype(np.float32)})[0][0] for row in x]
    return np.stack(rows)
