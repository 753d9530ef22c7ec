"""The float32 guard (compiler/float_guard.py): a pass whose output drifts from the
original model by more than half the equivalence tolerance is undone, with the reason
in its report and no certificate entries; a pass within the limit is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from analysis_helpers import network

from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.float_guard import GUARD_LIMIT, FloatGuard
from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network
from relugate.compiler.pipeline import Pipeline
from relugate.passes.base import CertificateEntry, PassContext, PassResult


class Nudge:
    """Shifts the last layer's bias by ``shift``: a stand-in for a fold's rounding."""

    name = "nudge"

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        last = net.layers[-1]
        assert isinstance(last, Dense)
        moved = Dense(last.name, weight=last.weight, bias=np.asarray(last.bias) + self.shift)
        entry = CertificateEntry("nudge", "equivalent", {"layer": last.name}, "test")
        return PassResult(net.with_layers((*net.layers[:-1], moved)), True, {}, (entry,))


def guarded_run(tmp_path: Path, shift: float) -> tuple[Network, Network, dict, list]:
    rng = np.random.default_rng(3)
    layers = [
        Dense("d0", weight=rng.normal(size=(6, 4)), bias=rng.normal(size=6)),
        Relu("r0"),
        Dense("d1", weight=rng.normal(size=(2, 6)), bias=np.zeros(2)),
    ]
    net = network((4,), layers)
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(net).SerializeToString())
    box = Box(-np.ones(net.input.size), np.ones(net.input.size))
    guard = FloatGuard(str(path), net, box)
    result = Pipeline([Nudge(shift)], guard=guard).run(net, PassContext(domain=box))
    return net, result.network, result.steps[0].report, result.certificate


def test_a_pass_that_drifts_too_far_is_undone(tmp_path: Path) -> None:
    net, out, report, certificate = guarded_run(tmp_path, 4 * GUARD_LIMIT)
    assert out is net
    assert "undone" in report["float_guard"] and certificate == []


def test_a_pass_within_the_limit_is_kept(tmp_path: Path) -> None:
    net, out, report, certificate = guarded_run(tmp_path, GUARD_LIMIT / 4)
    assert out is not net
    assert "float_guard" not in report and len(certificate) == 1


def test_example_on_a_wide_box_compiles_with_the_fold_undone(tmp_path: Path) -> None:
    """The shipped example normalizes inputs around [5, 15]; on [0, 1] folding that
    normalization into the first layer loses float32 digits (1.3e-5): the compile keeps
    the Sub/Div (imported as a dividing Scale, exported as Div) and still succeeds."""
    import json

    from relugate.compiler.compile import CompileOptions, compile_model

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    options = CompileOptions(out_dir=out)
    compile_model(root / "examples/collision.onnx", options, input_box=["0,1"])
    report = json.loads((out / "report.json").read_text())
    steps = {p["name"]: p for p in report["passes"]}
    assert "undone" in steps["fold_scale"]["details"]["float_guard"]
    assert report["check"]["max_relative_error"] <= report["check"]["tolerance"]
