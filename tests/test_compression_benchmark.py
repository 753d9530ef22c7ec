"""Smoke tests of the compression benchmark (benchmarks/compression*.py) on tiny inputs:
the functions run, their checks catch what they should, the tables render."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import mlp_model, save_model
from onnx_builders import chain, f32, step
from rich.console import Console

from benchmarks import compression, compression_acas, compression_conv, compression_digits
from relugate.compiler.domain import Box
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Dense
from relugate.compiler.network import TensorSpec
from relugate.compiler.onnx_run import run_batch

QUIET = Console(quiet=True)


@pytest.fixture
def few_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "CHECK_SAMPLES", 300)


def test_symbolic_batch_runs_the_original_nodes_on_a_batch(tmp_path: Path) -> None:
    model = mlp_model([3, 5, 2])
    wide = compression.symbolic_batch(save_model(model, tmp_path / "m.onnx"))
    assert wide.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert [n.op_type for n in wide.graph.node] == [n.op_type for n in model.graph.node]
    net = import_network(load_model(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).random((7, 3))
    box = Box(np.zeros(3), np.ones(3))
    gap = compression.sample_gap(wide, compression.batched(net), box, (3,), samples=50)
    assert gap["samples"] == 53 and gap["max_abs_diff"] < 1e-6
    np.testing.assert_allclose(
        run_batch(wide, TensorSpec("x", (7, 3), True, "N"), x),
        net.forward(x).reshape(7, -1),
        atol=1e-5,
    )


def test_sample_gap_sees_a_changed_network(few_samples: None) -> None:
    data = compression_digits.digits(0)
    net, _ = compression_digits.train_mlp(4, 0.0, 0, epochs=1, data=data)
    last = net.layers[-1]
    assert isinstance(last, Dense)
    bad = net.with_layers([*net.layers[:-1], Dense("fc2", last.weight, last.bias + 1e-3)])
    box = compression_digits.domains(data[0])["unit"]
    result = compression.check(net, bad, box)
    assert 9e-4 < result["max_abs_diff"] < 2e-3 and result["pgd_max_abs_diff"] > 9e-4


def test_interleaved_latency_reports_both_models() -> None:
    model = mlp_model([3, 4, 2])
    x = np.zeros((1, 3), dtype=np.float32)
    lat = compression.interleaved_latency(model, model, x, rounds=5)
    assert lat["rounds"] == 5 and lat["a_us"] > 0 and lat["b_us"] > 0 and lat["ratio"] > 0


def test_digits_row_exact_check_and_table(
    few_samples: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compression_digits, "EPOCHS", 2)
    data = compression_digits.digits(0)
    boxes = compression_digits.domains(data[0])
    assert np.all(boxes["data"].lo >= 0) and np.all(boxes["data"].hi <= 1)
    assert np.sum(boxes["data"].width == 0) >= 1  # some pixels are always 0
    row = compression_digits.one_net(6, 3e-3, 0, data, boxes, 0, QUIET)
    assert row["relus"] == 12
    for dom in ("unit", "data"):
        exact = row[dom]["exact"]
        assert exact["confirmed"] == exact["claims"] and not exact["wrong"]
        assert row[dom]["crown"]["check"]["max_abs_diff"] < 1e-5
        skip = row[dom]["skip"]
        assert skip["check"]["max_abs_diff"] < 1e-5
        assert skip["after"]["params"] <= skip["before"]["params"]
        assert skip["removed_pct"] >= row[dom]["milp"]["removed_pct"]
    text = "\n".join(compression_digits.markdown([row]))
    assert "| 6 | 0.003 | 0 |" in text and "Serra et al." in text and "with skip path" in text


def test_exact_check_contradicts_a_false_claim() -> None:
    data = compression_digits.digits(0)
    net, _ = compression_digits.train_mlp(5, 0.0, 0, epochs=1, data=data)
    box = compression_digits.domains(data[0])["unit"]
    pre = net.activations(data[0])[1]  # fc0 output: some unit is positive on the data
    unit = int(np.argmax(pre.max(axis=0)))
    result = compression_digits.exact_check(net, box, [("inactive", "relu0", unit)])
    assert result["wrong"] == [("inactive", "relu0", unit)] and result["confirmed"] == 0


def tiny_conv(tmp_path: Path) -> tuple[Path, Path]:
    """Conv 1->2 (3x3) -> ReLU -> MaxPool 2x2 -> Flatten -> Gemm, and a box spec."""
    rng = np.random.default_rng(0)
    model = chain(
        [1, 1, 6, 6],
        [
            step("Conv", "$act", f32(rng, 2, 1, 3, 3), f32(rng, 2, scale=0.1)),
            step("Relu"),
            step("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
            step("Flatten"),
            step("Gemm", "$act", f32(rng, 3, 8), f32(rng, 3), transB=1),
        ],
    )
    path = save_model(model, tmp_path / "conv.onnx")
    lines = [f"(declare-const X_{i} Real)" for i in range(36)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} 0.4))\n(assert (<= X_{i} 0.5))" for i in range(36)]
    lines += ["(assert (<= Y_0 Y_1))"]
    spec = tmp_path / "box.vnnlib"
    spec.write_text("\n".join(lines) + "\n")
    return path, spec


def test_conv_row_rewrites_maxpool_and_matches(few_samples: None, tmp_path: Path) -> None:
    model, spec = tiny_conv(tmp_path)
    row = compression_conv.one_spec(spec, 200, QUIET, model=model, rounds=(3, 2))
    assert row["original"]["maxpools"] == 1 and row["final"]["maxpools"] == 0
    assert row["maxpool_rewritten"]["relus"] > row["original"]["relus"]
    assert row["final"]["relus"] < row["maxpool_rewritten"]["relus"]
    windows, removed = row["windows"], row["removed"]
    assert windows["windows"] == 2 * 2 * 2 and windows["one_element"] <= windows["windows"]
    assert row["dominated_entries"] == removed["interval"] + removed["crown"] > 0
    assert row["check"]["max_rel_diff"] <= 1e-5 and row["check"]["pgd_max_abs_diff"] <= 1e-5
    assert row["latency_batch64"]["rounds"] == 2
    text = "\n".join(compression_conv.markdown([row]))
    assert "MaxPool fully rewritten in every row: True" in text


@pytest.mark.benchmarks
def test_acas_rows_on_one_network(
    benchmarks: Path, few_samples: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(compression_acas, "ROUNDS_1", 3)
    monkeypatch.setattr(compression_acas, "ROUNDS_1000", 2)
    rows = compression_acas.one_net("1_1", (), tmp_path, QUIET)
    assert [(r["prop"], r["method"]) for r in rows] == [
        (p, a) for p in (1, 2, 3, 4) for a in ("crown", "split")
    ]
    assert all(r["after"]["relus"] < r["before"]["relus"] for r in rows)
    by = {(r["prop"], r["method"]): r["after"]["relus"] for r in rows}
    assert all(by[p, "split"] <= by[p, "crown"] for p in (1, 2, 3, 4))
    assert all(max(r["check"]["max_abs_diff"], r["check"]["pgd_max_abs_diff"]) < 1e-5 for r in rows)
    text = "\n".join(compression_acas.markdown(rows))
    assert "| 1_1 | 3 | crown |" in text and "below 1e-5" in text


def test_driver_markdown_with_skipped_studies() -> None:
    payload = {
        "meta": {
            "relugate": "0",
            "machine": "m",
            "date": "d",
            "seconds": {"acas": 1.0, "conv": 2.0},
            "argv": {"acas": [], "conv": ["--only", "conv"]},
        },
        "acas": [],
        "conv": [],
    }
    text = compression.markdown(payload)
    assert "ACAS Xu" in text and "Convnet_maxpool" in text and "Skipped" in text
