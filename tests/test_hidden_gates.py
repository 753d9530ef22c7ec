"""Hidden-layer gates: the clamp they emit, its numbers in onnxruntime, soundness under
attack, the polytope output gates refuse, and the errors (no provable region, no such
layer, a tampered certificate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import invoke, says
from test_gates import SPEC_IN, assert_safe, pgd_points, run_gated
from test_verify import spec, tiny_net

from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.errors import BadSpec, ProofFailed
from relugate.compiler.fidelity import run_any, symbolic_batch
from relugate.compiler.frontend import load_model
from relugate.compiler.gates_onnx import gate_part, strip_gates
from relugate.compiler.hidden_onnx import (
    HIDDEN,
    append_clamp,
    clamp_part,
    cuts,
    find_cut,
    strip_clamp,
    tail_model,
)
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Dense
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import Polytope, read_vnnlib
from relugate.compiler.verify import float32_inside
from relugate.passes.analysis.hidden_gate import Samples, design_region, widen_region
from relugate.passes.analysis.hidden_proof import prove_tail
from relugate.passes.analysis.hidden_tighten import tighten
from relugate.passes.analysis.steps import steps_of

H = HIDDEN
BAND = "(and (>= Y_0 0.2) (<= Y_0 0.5))"
"""Unsafe: y0 in a band.  Its rows have opposite signs on Y_0 and Y_1 is absent, so no
output gate exists (``choose_coordinate`` refuses); violated on [-1, 1]^2."""


def compile_hidden(tmp_path: Path, path: Path, layer: str = "auto") -> tuple[Path, Path, dict]:
    model = tiny_net(tmp_path)
    out = tmp_path / "out"
    options = CompileOptions(out_dir=out, gate_timeout=10, gate_layer=layer)
    return model, out, compile_model(model, options, specs=[path]).report


# --- golden and numeric -----------------------------------------------------------


def test_golden_clamp_nodes(tmp_path: Path) -> None:
    core = onnx.load(str(tiny_net(tmp_path)))
    (cut,) = cuts(core)
    assert cut.index == 0 and cut.shape == (3,)
    lo, hi = np.array([0.0, 0.0, 0.25]), np.array([1.5, 0.5, 0.75])
    gated = append_clamp(core, cut, lo, hi)
    nodes, consts = clamp_part(gated)
    relu = core.graph.node[cut.node]
    tail = core.graph.node[-1]  # the output layer: its copy computes the ungated output
    assert [(n.op_type, n.name, list(n.input), list(n.output)) for n in nodes] == [
        ("Max", H + "max", [relu.output[0], H + "lo"], [H + "max:out"]),
        ("Min", H + "min", [H + "max:out", H + "hi"], [H + "min:out"]),
        ("Gemm", H + "ungated/" + tail.name, [relu.output[0], *tail.input[1:]], ["y_ungated"]),
    ]
    assert gated.graph.node[-1].name == H + "ungated/" + tail.name  # last: after the output
    assert [n.name for n in gated.graph.node if n.output[0] == "y"] == [tail.name]
    after = [n.name for n in gated.graph.node if relu.output[0] in n.input]
    assert after == [H + "max", H + "ungated/" + tail.name]  # the clamp and the copy
    order = [n.name for n in gated.graph.node]
    assert order.index("relugate_gate/hidden/min") == order.index(relu.name) + 2
    value = {c.name: onnx.numpy_helper.to_array(c) for c in consts}
    np.testing.assert_array_equal(value[H + "lo"], np.float32([lo]))
    np.testing.assert_array_equal(value[H + "hi"], np.float32([hi]))
    assert {c.data_type for c in consts} == {onnx.TensorProto.FLOAT}
    assert gate_part(gated) == ([], [])  # output gates: none
    assert strip_clamp(gated).SerializeToString() == core.SerializeToString()
    assert strip_gates(gated).SerializeToString() == core.SerializeToString()


def test_clamped_model_matches_numpy(tmp_path: Path) -> None:
    core = onnx.load(str(tiny_net(tmp_path)))
    cut = find_cut(core, 0)
    lo, hi = np.float32([0.1, 0.0, 0.2]), np.float32([0.9, 0.3, 0.6])
    gated = append_clamp(core, cut, lo.astype(np.float64), hi.astype(np.float64))
    x = np.random.default_rng(0).uniform(-1, 1, (5000, 2)).astype(np.float32)
    w1 = np.float32([[1, 1], [1, -1], [1, 0]])
    w2 = np.float32([[1, -1, 0], [0, 0, 1]])
    h = np.clip(np.maximum(x @ w1.T, 0), lo, hi)
    np.testing.assert_allclose(run_gated(gated, x), h @ w2.T, rtol=0, atol=1e-6)
    tail_in = TensorSpec(cut.tensor, (1, 3), True)
    tail = run_batch(tail_model(core, cut), tail_in, h)  # the tail alone, on the clamped h
    np.testing.assert_allclose(tail, run_gated(gated, x), rtol=0, atol=1e-6)


def test_runtime_counts_hidden_gate_firings(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    from tvm_helpers import make_bundle

    import relugate.runtime as rt

    core = onnx.load(str(tiny_net(tmp_path)))
    lo, hi = np.float32([0.0, 0.0, 0.0]), np.float32([1.0, 0.5, 0.75])
    gated = append_clamp(core, find_cut(core, 0), lo.astype(np.float64), hi.astype(np.float64))
    model = rt.load(make_bundle(tmp_path / "b", model=symbolic_batch(gated)))
    x = np.random.default_rng(6).uniform(-1, 1, (300, 2)).astype(np.float32)
    result = model.run_detailed(x)
    h = np.maximum(x @ np.float32([[1, 1], [1, -1], [1, 0]]).T, 0)
    clipped = (h > hi).any(axis=1)  # every hidden value reaches the output
    assert 0 < clipped.sum() < len(x)
    np.testing.assert_array_equal(result.gate_fired, clipped)
    np.testing.assert_allclose(result.output, run_gated(gated, x), rtol=0, atol=1e-6)
    assert model.stats()["gate_fired"] == int(clipped.sum())


# --- soundness: the polytope output gates refuse, repaired by a hidden gate -------


def test_output_gate_refuses_band(tmp_path: Path) -> None:
    with pytest.raises(ProofFailed, match="no output gate for"):
        compile_hidden(tmp_path, spec(tmp_path, -1, 1, BAND), layer="output")
    assert not (tmp_path / "out").exists()


def test_band_repaired_by_hidden_gate_survives_attack(tmp_path: Path) -> None:
    path = spec(tmp_path, -1, 1, BAND)
    model, out, report = compile_hidden(tmp_path, path)  # auto: falls back to hidden
    assert report["verdict_original"][0]["verdict"] == "violated"
    assert report["gates"] == []
    hidden = report["hidden_gate"]
    assert report["gate_placement"]["used"] == "hidden"
    assert "no output gate for" in report["gate_placement"]["fallback_from"]
    assert hidden["layer"] == 0 and [p["verdict"] for p in hidden["tail_proof"]] == ["holds"]
    fid = report["fidelity"][0]
    # one box cannot hold both sides of the band: the safest side's samples are kept
    assert fid["unsafe_gated"] == 0 and fid["safe_close"] > 0.01
    gated = onnx.load(str(out / "model.onnx"))
    assert [n.op_type for n in clamp_part(gated)[0]] == ["Max", "Min", "Gemm"]
    case = read_vnnlib(path).cases[0]
    rng = np.random.default_rng(3)
    x = case.box.sample(1_000_000, rng)
    assert case.is_unsafe(run_batch(str(model), SPEC_IN, x[:20000].astype(np.float32))).any()
    assert_safe(gated, case, x)
    attack = pgd_points(model, case, 100, rng)
    assert case.is_unsafe(run_batch(str(model), SPEC_IN, attack.astype(np.float32))).any()
    assert_safe(gated, case, attack)
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["hidden_gate"]["region"] == hidden["region"]
    result = invoke("check", out)
    assert result.exit_code == 0, result.output
    assert says(result.stdout, "hidden gate at layer 0", "1 cases proved again")


def test_hidden_gate_keeps_a_holding_property(tmp_path: Path) -> None:
    band = spec(tmp_path, -1, 1, BAND, name="band.vnnlib")
    holds = spec(tmp_path, -1, 1, "(>= Y_1 2.5)", name="holds.vnnlib")  # y1 = relu(x0) <= 1
    out = tmp_path / "out"
    options = CompileOptions(out_dir=out, gate_timeout=10)
    report = compile_model(tiny_net(tmp_path), options, specs=[band, holds]).report
    assert [v["verdict"] for v in report["verdict_original"]] == ["violated", "holds"]
    proofs = report["hidden_gate"]["tail_proof"]
    assert [(p["property"], p["verdict"]) for p in proofs] == [(0, "holds"), (1, "holds")]
    gated = onnx.load(str(out / "model.onnx"))
    rng = np.random.default_rng(7)
    for path in (band, holds):
        case = read_vnnlib(path).cases[0]
        assert_safe(gated, case, case.box.sample(200_000, rng))
    assert invoke("check", out).exit_code == 0


def test_explicit_layer_on_violated_two_rows(tmp_path: Path) -> None:
    path = spec(tmp_path, -1, 1, "(and (>= Y_0 Y_1) (>= Y_0 0.2))")
    _, out, report = compile_hidden(tmp_path, path, layer="0")
    assert report["hidden_gate"]["layer"] == 0 and report["gates"] == []
    case = read_vnnlib(path).cases[0]
    gated = onnx.load(str(out / "model.onnx"))
    assert_safe(gated, case, case.box.sample(200_000, np.random.default_rng(4)))


# --- errors -----------------------------------------------------------------------


def test_region_search_gives_up_when_nothing_proves() -> None:
    rng = np.random.default_rng(0)
    samples = Samples(rng.random((50, 3)), np.ones(50, dtype=bool))
    hull = (np.zeros(3), np.ones(3))
    tried: list[tuple[np.ndarray, np.ndarray]] = []

    def never(region: tuple[np.ndarray, np.ndarray]) -> bool:
        tried.append(region)
        return False

    assert design_region(samples, hull, never, lambda h: np.ones(len(h))) is None
    assert len(tried) == 2  # the hull of every safe sample, then the anchor alone


def test_region_search_grows_to_what_proves() -> None:
    rng = np.random.default_rng(0)
    samples = Samples(rng.random((400, 2)), np.ones(400, dtype=bool))

    def below(region: tuple[np.ndarray, np.ndarray]) -> bool:  # provable: hi[0] < 0.8
        return bool(region[1][0] < 0.8)

    found = design_region(samples, (np.zeros(2), np.ones(2)), below, lambda h: 1 - h[:, 0])
    assert found is not None
    (_, hi), info = found
    kept = float((samples.hidden[:, 0] < 0.8).mean())  # every sample below 0.8, no other
    assert hi[0] < 0.8 and info["safe_inside"] == pytest.approx(kept, abs=1 / 400)


def test_unprovable_region_clear_error_no_bundle(tmp_path: Path) -> None:
    path = spec(tmp_path, -1, 1, "(or (<= Y_0 0) (>= Y_0 0))")  # every output unsafe
    out = tmp_path / "out"
    result = invoke(
        "compile",
        tiny_net(tmp_path),
        "-o",
        out,
        "--spec",
        path,
        "--gate-layer",
        "0",
        "--gate-timeout",
        "5",
        "--target",
        "none",
    )
    assert result.exit_code == 4, result.output
    assert says(result.stderr, "no hidden gate at layer 0", "nothing was written"), result.stderr
    assert not out.exists()


def test_missing_layer_is_a_bad_spec(tmp_path: Path) -> None:
    core = onnx.load(str(tiny_net(tmp_path)))
    with pytest.raises(BadSpec, match=r"hidden gate layer 3 does not exist.*1 hidden layers"):
        find_cut(core, 3)
    with pytest.raises(BadSpec, match="--gate-layer must be"):
        compile_hidden(tmp_path, spec(tmp_path, -1, 1, BAND), layer="middle")


def test_tail_proof_refuses_unsafe_region(tmp_path: Path) -> None:
    core = onnx.load(str(tiny_net(tmp_path)))
    tail = tail_model(core, find_cut(core, 0))
    prop = read_vnnlib(spec(tmp_path, -1, 1, BAND))
    unsafe_box = (np.array([0.3, 0.0, 0.0]), np.array([0.4, 0.0, 0.0]))  # y0 in [0.3, 0.4]
    (proof,) = prove_tail(tail, [[unsafe_box]], [prop], 5.0)
    assert proof.verdict == "violated" and not proof.proved
    safe_box = (np.array([0.6, 0.0, 0.0]), np.array([0.9, 0.0, 0.0]))
    assert prove_tail(tail, [[safe_box]], [prop], 5.0)[0].proved


def test_check_catches_a_tampered_region(tmp_path: Path) -> None:
    _, out, _ = compile_hidden(tmp_path, spec(tmp_path, -1, 1, BAND))
    cert_path = out / "certificate.json"
    cert = json.loads(cert_path.read_text())
    kept = cert["hidden_gate"]["region"]["hi"][0]
    cert["hidden_gate"]["region"]["hi"][0] = float(np.float32(kept + 1.0))
    cert_path.write_text(json.dumps(cert))
    result = invoke("check", out)
    assert result.exit_code == 5, result.output
    assert says(result.stderr, "hidden gate in model.onnx differs from the certificate")
    cert["hidden_gate"]["region"]["hi"][0] = kept
    cert["hidden_gate"]["reach"][0][0]["hi"][0] = -1.0  # a reach box CROWN does not fit in
    cert_path.write_text(json.dumps(cert))
    result = invoke("check", out)
    assert result.exit_code == 5 and says(result.stderr, "are not inside the certificate's")


@pytest.mark.slow
def test_acasxu_prop2_hidden_gate(benchmarks: Path, tmp_path: Path) -> None:
    model = benchmarks / "acasxu" / "ACASXU_run2a_1_2_batch_2000.onnx"
    path = benchmarks / "acasxu" / "prop_2.vnnlib"
    out = tmp_path / "out"
    options = CompileOptions(out_dir=out, gate_timeout=30, gate_layer="hidden")
    report = compile_model(model, options, specs=[path]).report
    assert report["hidden_gate"] is not None and report["fidelity"][0]["safe_close"] >= 0.99
    case = read_vnnlib(path).cases[0]
    net = import_network(load_model(model))
    gated = onnx.load(str(out / "model.onnx"))
    x = float32_inside(case.box.sample(200_000, np.random.default_rng(5)), case.box)
    assert not case.is_unsafe(run_any(gated, net.input, x).astype(np.float64)).any()
    assert invoke("check", out).exit_code == 0


def test_tighten_shrinks_the_side_the_bound_needs() -> None:
    tail = Network(
        TensorSpec("h", (1, 2), True),
        TensorSpec("y", (1, 1), True),
        (Dense("d", weight=np.array([[1.0, -1.0]]), bias=np.zeros(1)),),
    )
    unsafe = Polytope(np.array([[1.0]]), np.array([0.0]))  # y = h0 - h1 <= 0
    rng = np.random.default_rng(0)
    h = rng.random((1000, 2))
    h = h[h[:, 0] > h[:, 1]]  # the safe samples: their hull holds unsafe points
    region = tighten(steps_of(tail), [unsafe], h, (h.min(axis=0), h.max(axis=0)))
    assert region is not None
    lo, hi = region
    assert lo[0] > hi[1]  # min over the box of h0 - h1 > 0: proved
    kept = np.all((h >= lo) & (h <= hi), axis=1).mean()
    assert 0.3 < kept < 0.6  # a box in the triangle holds at most half of it (sampled)


def test_hidden_falls_back_to_output_gates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import relugate.passes.insert_hidden as insert_hidden

    def refuse(*_: object) -> None:
        raise ProofFailed("no hidden gate at any of 1 layers (forced)")

    monkeypatch.setattr(insert_hidden, "design_hidden", refuse)
    path = spec(tmp_path, -1, 1, "(and (>= Y_0 Y_1) (>= Y_0 0.2))")
    report = compile_hidden(tmp_path, path, layer="hidden")[2]
    assert report["hidden_gate"] is None and len(report["gates"]) == 1
    placement = report["gate_placement"]
    assert placement["used"] == "output" and "forced" in placement["fallback_from"]
    (tmp_path / "band").mkdir()
    with pytest.raises(ProofFailed, match=r"no output gate for .*; and no hidden gate"):
        compile_hidden(tmp_path / "band", spec(tmp_path, -1, 1, BAND))  # auto: both refuse


def test_widen_moves_free_sides_toward_reach() -> None:
    rng = np.random.default_rng(0)
    h = rng.random((300, 2))
    samples = Samples(h, np.ones(300, dtype=bool))
    hull = (h.min(axis=0), h.max(axis=0))
    tight = (hull[0], np.array([hull[1][0], 0.5]))  # hi[1] was moved in: it stays
    (lo, hi), t = widen_region(
        tight, samples, (np.full(2, -1.0), np.full(2, 2.0)), lambda r: bool(r[1][0] < 1.5)
    )
    assert 0.45 < t <= 0.5 and hi[0] < 1.5 and hi[1] == np.float32(0.5)
    assert np.all(lo < hull[0]) and hi[0] > hull[1][0]


def test_verifier_error_is_no_proof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import relugate.compiler.verify as verify

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("generator raised StopIteration")

    monkeypatch.setattr(verify, "verify_model", broken)
    core = onnx.load(str(tiny_net(tmp_path)))
    prop = read_vnnlib(spec(tmp_path, -1, 1, BAND))
    safe_box = (np.array([0.6, 0.0, 0.0]), np.array([0.9, 0.0, 0.0]))
    (proof,) = prove_tail(tail_model(core, find_cut(core, 0)), [[safe_box]], [prop], 5.0)
    assert not proof.proved and proof.verdict == "unknown"
    assert "verifier error: RuntimeError" in proof.method
