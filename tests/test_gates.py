"""Output gates: the ONNX they emit, their numbers, their soundness under attack, and
the errors (contradictory specs, missing outputs, polytopes no gate can escape)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import invoke, says
from test_verify import spec, tiny_net

from relugate.compiler.certificate import sha256_file
from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.exporter import to_onnx
from relugate.compiler.fidelity import symbolic_batch
from relugate.compiler.frontend import load_model
from relugate.compiler.gates_onnx import append_gates, gate_part, strip_gates
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import Case, parse_vnnlib, read_vnnlib
from relugate.compiler.verify import float32_inside
from relugate.passes.analysis.attack import margin_objective
from relugate.passes.analysis.gate_design import design_gates, evaluate_gates
from relugate.passes.analysis.pgd import pgd_maximize

TWO_ROWS = "(and (>= Y_0 Y_1) (>= Y_0 0.2))"  # violated on [-1, 1]^2: x = (1, 1) gives (2, 1)
SPEC_IN = TensorSpec("x", (1, 2), True)


def gated_compile(tmp_path: Path, *specs: Path) -> tuple[Path, Path, dict]:
    model = tiny_net(tmp_path)
    out = tmp_path / "out"
    result = compile_model(model, CompileOptions(out_dir=out, gate_timeout=10), specs=list(specs))
    return model, out, result.report


def run_gated(model: onnx.ModelProto, x: np.ndarray, width: int = 2) -> np.ndarray:
    batched = symbolic_batch(model)
    assert batched is not None
    out = run_batch(batched, TensorSpec("x", (len(x), 2), True, "N"), x).astype(np.float64)
    assert out.shape == (len(x), width)
    return out


def pgd_points(model: Path, case: Case, starts: int, rng: np.random.Generator) -> np.ndarray:
    """PGD on the ORIGINAL net's unsafe margin: the best point of each of ``starts`` runs."""
    net = import_network(load_model(model))
    points = [
        pgd_maximize(margin_objective(net, poly), case.box, rng, starts=1, steps=40).x
        for poly in case.unsafe
        for _ in range(starts)
    ]
    return np.array(points)


def assert_safe(model: onnx.ModelProto, case: Case, x: np.ndarray) -> None:
    y = run_gated(model, float32_inside(x, case.box))
    assert not case.is_unsafe(y).any(), "a gated output is unsafe"


# --- golden and numeric -----------------------------------------------------------


def test_golden_nodes_of_one_gate(tmp_path: Path) -> None:
    core = onnx.load(str(tiny_net(tmp_path)))
    prop = read_vnnlib(spec(tmp_path, -1, 1, TWO_ROWS))
    gates = design_gates([prop], [True], [[(np.array([-2.0, -1.0]), np.array([2.0, 1.0]))]])
    assert [g.formula() for g in gates] == [
        f"Y_0 <- min(Y_0, max(Y_1, 0.2) - {gates[0].delta:.3g})"
    ]
    gated = append_gates(core, gates)
    nodes, consts = gate_part(gated)
    assert [(n.op_type, n.name.removeprefix("relugate_gate/")) for n in nodes] == [
        ("Gemm", "box0/sides"),
        ("Relu", "box0/outside"),
        ("Gemm", "s0/shift"),
        ("Gemm", "s0/t"),
        ("ReduceMax", "s0/T"),
        ("Gemm", "s0/spread"),
        ("Min", "s0/apply"),
    ]
    assert nodes[0].input[0] == "x"
    assert nodes[3].input[0] == "y_ungated" and list(nodes[-1].output) == ["y"]
    value = {c.name.removeprefix("relugate_gate/"): onnx.numpy_helper.to_array(c) for c in consts}
    np.testing.assert_array_equal(value["box0/b"], [-1, -1, -1, -1])  # [lo, -hi]
    np.testing.assert_array_equal(value["box0/W"], [[-1, 0, 1, 0], [0, -1, 0, 1]])
    np.testing.assert_array_equal(value["s0/C"], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(
        value["s0/c"], np.float32([-gates[0].delta, 0.2 - gates[0].delta])
    )
    np.testing.assert_array_equal(value["s0/mask"], [0, np.inf])
    assert {c.data_type for c in consts} == {onnx.TensorProto.FLOAT}
    assert [o.name for o in gated.graph.output] == ["y"]
    onnx.checker.check_model(gated, full_check=True)
    assert strip_gates(gated).SerializeToString() == core.SerializeToString()


def test_gated_model_computes_the_formula(tmp_path: Path) -> None:
    core = onnx.load(str(tiny_net(tmp_path)))
    prop = read_vnnlib(spec(tmp_path, -1, 0.5, TWO_ROWS))
    gates = design_gates([prop], [True], [[(np.array([-3.0, -1.0]), np.array([3.0, 1.0]))]])
    rng = np.random.default_rng(0)
    inside = prop.cases[0].box.sample(2000, rng)
    shell = 0.5 + rng.random((2000, 2)) * 2e-3  # partly on, just outside the box
    far = rng.uniform(0.6, 1.0, (2000, 2))
    for x in (inside, shell, far):
        x = x.astype(np.float32)
        y = run_gated(core, x)
        want = evaluate_gates(gates, x.astype(np.float64), y)
        np.testing.assert_allclose(run_gated(append_gates(core, gates), x), want, atol=1e-5)
    assert (run_gated(append_gates(core, gates), far) == run_gated(core, far)).all()


def test_commuting_gates_share_one_stage(tmp_path: Path) -> None:
    """MNIST-style: 'Y_1 or Y_2 reaches Y_0' gives two one-row gates in one stage."""
    first = Dense("h", weight=np.array([[1.0, 1.0], [1.0, -1.0]]), bias=np.zeros(2))
    second = Dense("o", weight=np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), bias=np.zeros(3))
    layers = (first, Relu("r"), second)
    net = Network(TensorSpec("x", (1, 2), True), TensorSpec("y", (1, 3), True), layers)
    core = to_onnx(net)
    text = spec(tmp_path, -1, 1, "(or (>= Y_1 Y_0) (>= Y_2 Y_0))").read_text()
    prop = parse_vnnlib("(declare-const Y_2 Real)\n" + text)
    ranges = [[(np.full(3, -3.0), np.full(3, 3.0))]]
    gates = design_gates([prop], [True], ranges)
    assert [g.formula().split(" - ")[0] for g in gates] == [
        "Y_1 <- min(Y_1, Y_0",
        "Y_2 <- min(Y_2, Y_0",
    ]
    gated = append_gates(core, gates)
    nodes, consts = gate_part(gated)
    assert [n.op_type for n in nodes] == ["Gemm", "Relu", "Gemm", "Gemm", "Min"]
    value = {c.name.removeprefix("relugate_gate/"): onnx.numpy_helper.to_array(c) for c in consts}
    np.testing.assert_array_equal(value["s0/C"], [[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(value["s0/c"][0], np.inf)  # Y_0 is not gated
    x = np.random.default_rng(4).uniform(-1.2, 1.2, (5000, 2)).astype(np.float32)
    y = run_gated(core, x, width=3)
    want = evaluate_gates(gates, x.astype(np.float64), y)
    np.testing.assert_allclose(run_gated(gated, x, width=3), want, atol=1e-5)


def test_wide_input_uses_elementwise_box(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    layers = (Dense("o", weight=rng.normal(size=(2, 20)), bias=np.zeros(2)),)
    core = to_onnx(Network(TensorSpec("x", (1, 20), True), TensorSpec("y", (1, 2), True), layers))
    lines = [f"(declare-const X_{i} Real)" for i in range(20)] + ["(declare-const Y_0 Real)"]
    lines += ["(declare-const Y_1 Real)", "(assert (>= Y_0 Y_1))"]
    lines += [f"(assert (>= X_{i} -0.1))\n(assert (<= X_{i} 0.1))" for i in range(20)]
    gates = design_gates([parse_vnnlib("\n".join(lines))], [True], [[(-np.ones(2), np.ones(2))]])
    gated = append_gates(core, gates)
    assert [n.op_type for n in gate_part(gated)[0]][:4] == ["Sub", "Sub", "Max", "Relu"]
    x = rng.uniform(-0.11, 0.11, (3000, 20)).astype(np.float32)
    y = run_batch(symbolic_batch(core), TensorSpec("x", (3000, 20), True, "N"), x)
    got = run_batch(symbolic_batch(gated), TensorSpec("x", (3000, 20), True, "N"), x)
    want = evaluate_gates(gates, x.astype(np.float64), y.astype(np.float64))
    dist = (np.maximum(np.abs(x) - 0.1, 0) / 0.2).sum(axis=1)  # float32 rounding of M dist
    assert (np.abs(got - want) <= 1e-5 + 1e-6 * gates[0].M * dist[:, None]).all()


# --- soundness --------------------------------------------------------------------


def test_violated_instance_repaired_survives_attack(tmp_path: Path) -> None:
    path = spec(tmp_path, -1, 1, TWO_ROWS)
    model, out, report = gated_compile(tmp_path, path)
    assert report["verdict_original"][0]["verdict"] == "violated"
    assert len(report["gates"]) == 1 and report["gate_proof"]["cases"][0]["status"] == "unsat"
    fid = report["fidelity"][0]
    assert fid["unsafe_gated"] == 0 and fid["safe_close"] >= 0.99 and fid["close"] < 1.0
    gated = onnx.load(str(out / "model.onnx"))
    # the box is the whole domain: no input check, the gate is always on
    assert report["gates"][0]["switch"] is False
    assert [n.op_type for n in gate_part(gated)[0]] == ["Gemm", "ReduceMax", "Gemm", "Min"]
    case = read_vnnlib(path).cases[0]
    rng = np.random.default_rng(1)
    assert_safe(gated, case, case.box.sample(1_000_000, rng))
    attack = pgd_points(model, case, 100, rng)
    assert case.is_unsafe(run_batch(str(model), SPEC_IN, attack.astype(np.float32))).any()
    assert_safe(gated, case, attack)


def test_multi_property_compile_respects_both(tmp_path: Path) -> None:
    first = spec(tmp_path, 0, 1, "(>= Y_0 0.5)", name="a.vnnlib")
    second = tmp_path / "b.vnnlib"
    text = spec(tmp_path, -1, 1, "(<= Y_0 Y_1)", name="b.vnnlib").read_text()
    second.write_text(text.replace("(<= X_0 1)", "(<= X_0 0.25)"))
    _, out, report = gated_compile(tmp_path, first, second)
    assert [v["verdict"] for v in report["verdict_original"]] == ["violated", "violated"]
    assert [g["formula"].split(" <-")[0] for g in report["gates"]] == ["Y_0", "Y_1"]
    modes = [c["modes"] for c in report["gate_proof"]["cases"]]
    assert modes == [["on", "partial"], ["partial", "on"]]
    gated = onnx.load(str(out / "model.onnx"))
    rng = np.random.default_rng(2)
    for path in (first, second):
        case = read_vnnlib(path).cases[0]
        assert_safe(gated, case, case.box.sample(200_000, rng))
    cert = json.loads((out / "certificate.json").read_text())
    assert [p["gated"] for p in cert["properties"]] == [True, True]


def test_holds_gets_no_gate_and_a_proof(tmp_path: Path) -> None:
    _, out, report = gated_compile(tmp_path, spec(tmp_path, 0, 1, "(>= Y_0 2.5)"))
    assert report["gates"] == [] and report["verdict_original"][0]["verdict"] == "holds"
    assert report["verdict_original"][0]["core"]["verdict"] == "holds"
    assert gate_part(onnx.load(str(out / "model.onnx"))) == ([], [])
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["properties"][0]["gated"] is False
    assert cert["proof"]["cases"][0]["status"] == "trivial"


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unsafe", "code", "needles"),
    [
        ("(or (<= Y_0 0) (>= Y_0 0))", 4, ["cannot be proved safe", "contradictory"]),
        ("(and (>= Y_0 0.5) (<= Y_1 0.5))", 4, ["no output gate for", "unsafe polytope 1"]),
        ("(>= Y_2 0)", 3, ["bad spec", "Y_2 does not exist"]),
    ],
    ids=["contradictory", "no-coordinate", "missing-output"],
)
def test_errors_write_nothing(tmp_path: Path, unsafe: str, code: int, needles: list[str]) -> None:
    path = spec(tmp_path, -1, 1, unsafe)
    if "Y_2" in unsafe:
        path.write_text("(declare-const Y_2 Real)\n" + path.read_text())
    out = tmp_path / "out"
    # --gate-layer output: with auto a hidden gate repairs the no-coordinate polytope
    # (tests/test_hidden_gates.py)
    result = invoke(
        "compile",
        tiny_net(tmp_path),
        "-o",
        out,
        "--spec",
        path,
        "--gate-timeout",
        "5",
        "--gate-layer",
        "output",
    )
    assert result.exit_code == code, result.output
    assert says(result.stderr, *needles), result.stderr
    assert not out.exists()


# --- relugate check ---------------------------------------------------------------


def test_check_passes_then_catches_tampering(tmp_path: Path) -> None:
    _, out, _ = gated_compile(tmp_path, spec(tmp_path, -1, 1, TWO_ROWS))
    ok = invoke("check", out)
    assert ok.exit_code == 0 and says(ok.stdout, "z3: 1 cases proved again", "ok:"), ok.output
    model_file, cert_file = out / "model.onnx", out / "certificate.json"
    pristine_model, pristine_cert = model_file.read_bytes(), cert_file.read_text()

    model = onnx.load(str(model_file))
    const = next(i for i in model.graph.initializer if i.name == "relugate_gate/s0/c")
    const.CopyFrom(onnx.numpy_helper.from_array(np.float32([0.5, 0.5]), const.name))
    onnx.save(model, str(model_file))
    bad = invoke("check", out)
    assert bad.exit_code == 5 and says(bad.stderr, "model.onnx does not match"), bad.output
    cert = json.loads(pristine_cert)  # the hash updated too: the nodes must still match
    cert["output_model"]["sha256"] = sha256_file(model_file)
    cert_file.write_text(json.dumps(cert))
    bad = invoke("check", out)
    assert bad.exit_code == 5 and says(bad.stderr, "gate nodes in model.onnx differ"), bad.output

    model_file.write_bytes(pristine_model)
    cert = json.loads(pristine_cert)
    cert["gates"][0]["delta"] /= 10
    cert_file.write_text(json.dumps(cert))
    bad = invoke("check", out)
    assert bad.exit_code == 5 and says(bad.stderr, "gates differ"), bad.output
    cert = json.loads(pristine_cert)
    cert["properties"][0]["cases"][0]["output_range"]["hi"][0] = 1.5
    cert_file.write_text(json.dumps(cert))
    bad = invoke("check", out)
    assert bad.exit_code == 5 and says(bad.stderr, "not inside"), bad.output


# --- public benchmark -------------------------------------------------------------


def test_vnncomp_test_sat_repaired(benchmarks: Path, tmp_path: Path) -> None:
    folder = benchmarks / "vnncomp2021_test"
    model, path = folder / "test_sat.onnx", folder / "test_prop.vnnlib"
    out = tmp_path / "out"
    report = compile_model(model, CompileOptions(out_dir=out), specs=[path]).report
    assert report["verdict_original"][0]["verdict"] == "violated" and report["gates"]
    fid = report["fidelity"][0]  # test_sat is unsafe everywhere: every output changes
    assert fid["original_safe_samples"] == 0 and fid["safe_close"] is None
    assert fid["same_argmin"] == 0.0 and fid["unsafe_gated"] == 0
    case = read_vnnlib(path).cases[0]
    net = import_network(load_model(model))
    gated = symbolic_batch(onnx.load(str(out / "model.onnx")))
    assert gated is not None
    rng = np.random.default_rng(3)
    x = np.concatenate([case.box.sample(100_000, rng), pgd_points(model, case, 20, rng)])
    spec_n = TensorSpec(net.input.name, (len(x), *net.input.sample_shape), True, "N")
    y = run_batch(gated, spec_n, float32_inside(x, case.box)).astype(np.float64)
    assert not case.is_unsafe(y).any()
    assert invoke("check", out).exit_code == 0
