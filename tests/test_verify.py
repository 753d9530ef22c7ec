"""The verifier: verdicts on small nets and public instances, every claim attacked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_model
from typer.testing import CliRunner

from relugate.compiler.cli import app
from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import read_vnnlib
from relugate.compiler.verify import float32_inside, verify_model
from relugate.passes.analysis.attack import margin_objective
from relugate.passes.analysis.pgd import pgd_maximize


def tiny_net(tmp_path: Path) -> Path:
    """y0 = relu(x0 + x1) - relu(x0 - x1), y1 = x0 (2 inputs, 2 outputs)."""
    first = Dense("h", weight=np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]), bias=np.zeros(3))
    second = Dense("o", weight=np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]), bias=np.zeros(2))
    net = Network(
        TensorSpec("x", (1, 2), True), TensorSpec("y", (1, 2), True), (first, Relu("r"), second)
    )
    return save_model(to_onnx(net), tmp_path / "tiny.onnx")


def spec(tmp_path: Path, lo: float, hi: float, unsafe: str, name: str = "p.vnnlib") -> Path:
    text = "\n".join(
        [
            "(declare-const X_0 Real)",
            "(declare-const X_1 Real)",
            "(declare-const Y_0 Real)",
            "(declare-const Y_1 Real)",
        ]
        + [f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))" for i in range(2)]
        + [f"(assert {unsafe})"]
    )
    path = tmp_path / name
    path.write_text(text)
    return path


def attack_holds(model: Path, spec_path: Path) -> None:
    """Try to break a 'holds': 100,000 samples and PGD from 20 starts, run in onnxruntime."""
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network

    net = import_network(load_model(model))
    prop = read_vnnlib(spec_path)
    rng = np.random.default_rng(0)
    for case in prop.cases:
        x = case.box.sample(100_000, rng)
        for poly in case.unsafe:
            found = pgd_maximize(margin_objective(net, poly), case.box, rng, starts=20, steps=50)
            x = np.concatenate([x, found.x[None]])
        y = run_batch(str(model), net.input, float32_inside(x, case.box))
        assert not case.is_unsafe(y.astype(np.float64)).any(), "a 'holds' verdict was broken"


def test_holds_is_proved_and_survives_attack(tmp_path: Path) -> None:
    model = tiny_net(tmp_path)
    # y0 = 2 min(x0, x1)-ish on [0, 1]^2 is within [-2, 2]: y0 >= 2.5 is unreachable
    prop = spec(tmp_path, 0, 1, "(>= Y_0 2.5)")
    result = verify_model(model, [prop], timeout=10)
    assert result.verdict == "holds", result.to_json()
    attack_holds(model, prop)


def test_violated_has_a_counterexample_confirmed_in_onnxruntime(tmp_path: Path) -> None:
    model = tiny_net(tmp_path)
    prop = spec(tmp_path, -1, 1, "(and (>= Y_0 0.9) (<= Y_1 0.5))")
    result = verify_model(model, [prop], timeout=10)
    assert result.verdict == "violated"
    cex = result.counterexample
    assert cex is not None
    x = np.array(cex["input"], dtype=np.float32)
    box = read_vnnlib(prop).cases[0].box
    assert box.contains(x.astype(np.float64))[0]
    y = run_batch(str(model), TensorSpec("x", (1, 2), True), x[None])[0]
    np.testing.assert_array_equal(y, np.array(cex["output"], dtype=np.float32))
    assert y[0] >= 0.9 and y[1] <= 0.5


def test_a_needle_violation_is_found_by_search_not_sampling(tmp_path: Path) -> None:
    """The unsafe region is a thin sliver: sampling misses it, splitting finds it."""
    model = tiny_net(tmp_path)
    # y1 = x0 in [0.5, 0.5005] and y0 = x0 + x1 >= 1.4995 needs x1 >= 0.999: area ~2.5e-7
    prop = spec(tmp_path, 0, 1, "(and (>= Y_1 0.5) (<= Y_1 0.5005) (>= Y_0 1.4995))")
    result = verify_model(model, [prop], timeout=20)
    assert result.verdict == "violated"
    assert result.method in {"pgd", "input-split"}


def test_unknown_on_timeout(tmp_path: Path) -> None:
    model = tiny_net(tmp_path)
    # holds, but only by splitting; no time for it
    prop = spec(tmp_path, -1, 1, "(and (>= Y_0 0.0) (<= Y_1 -0.0001) (>= Y_0 2.0001))")
    result = verify_model(model, [prop], timeout=0)
    assert result.verdict in {"unknown", "holds"}
    if result.verdict == "holds":
        assert result.method == "crown"


def test_cli_verify_writes_json_and_vnncomp(tmp_path: Path) -> None:
    model = tiny_net(tmp_path)
    prop = spec(tmp_path, -1, 1, "(and (>= Y_0 0.9) (<= Y_1 0.5))")
    runner = CliRunner()
    out_json, out_txt = tmp_path / "r.json", tmp_path / "r.txt"
    res = runner.invoke(
        app,
        [
            "verify",
            str(model),
            "--spec",
            str(prop),
            "--json",
            str(out_json),
            "--vnncomp",
            str(out_txt),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert data["verdict"] == "violated" and set(data["counterexample"]) == {"input", "output"}
    assert len(data["counterexample"]["input"]) == 2 and "seconds" in data and "method" in data
    lines = out_txt.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ")


def test_cli_verify_bad_spec_is_an_error(tmp_path: Path) -> None:
    model = tiny_net(tmp_path)
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    res = CliRunner().invoke(app, ["verify", str(model), "--spec", str(bad)])
    assert res.exit_code == 3 and "bad spec" in res.output


KNOWN = [
    ("vnncomp2021_test", "test_sat.onnx", "test_prop.vnnlib", "violated"),
    ("vnncomp2021_test", "test_unsat.onnx", "test_prop.vnnlib", "holds"),
    ("vnncomp2021_test", "test_tiny.onnx", "test_tiny.vnnlib", "holds"),
    ("vnncomp2021_test", "test_small.onnx", "test_small.vnnlib", "holds"),
    ("vnncomp2021_test", "test_nano.onnx", "test_nano.vnnlib", "holds"),
    ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib", "holds"),
    ("acasxu", "ACASXU_run2a_1_7_batch_2000.onnx", "prop_3.vnnlib", "violated"),
    ("acasxu", "ACASXU_run2a_1_6_batch_2000.onnx", "prop_3.vnnlib", "holds"),
    ("verivital", "Convnet_maxpool.onnx", "specs/prop_0_0.004.vnnlib", "holds"),
]


@pytest.mark.benchmarks
@pytest.mark.parametrize(("folder", "model", "prop", "expected"), KNOWN, ids=lambda v: str(v))
def test_public_instances(
    benchmarks: Path, folder: str, model: str, prop: str, expected: str
) -> None:
    m, p = benchmarks / folder / model, benchmarks / folder / prop
    result = verify_model(m, [p], timeout=60)
    assert result.verdict == expected, result.to_json()
    if expected == "holds" and folder != "verivital":
        attack_holds(m, p)


def test_box_rounding_keeps_counterexamples_inside() -> None:
    box = Box(np.array([0.1, 1 / 3]), np.array([0.1, 0.7]))
    x32 = float32_inside(np.array([0.1, 1 / 3]), box)
    assert box.contains(x32.astype(np.float64))[0] or x32[0] != np.float32(0.1)
