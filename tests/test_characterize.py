"""Input characterization: safe boxes sound by dense sampling, counterexamples confirmed
in onnxruntime, resume, patterns checked against sampling, runtime lookup, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import assert_no_traceback, invoke, says
from conftest import mlp_model, save_model

from relugate.compiler.characterize_run import characterize_model
from relugate.compiler.errors import BadSpec
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.characterize import inside32
from relugate.passes.analysis.characterize_patterns import _Prover, pattern_holds
from relugate.passes.analysis.steps import steps_of
from relugate.runtime.errors import BadInput, BundleError
from relugate.runtime.regions import boxes_contain, load_regions

LO, HI = -1.0, 1.0


def write_spec(path: Path, threshold: float, lo: list[float] | None = None) -> Path:
    """Unsafe: Y_0 >= Y_1 + threshold on [LO, HI]^2 (or the given lower corner)."""
    lo = lo or [LO, LO]
    lines = ["(declare-const X_0 Real)", "(declare-const X_1 Real)"]
    lines += ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    for i in range(2):
        lines += [f"(assert (>= X_{i} {lo[i]}))", f"(assert (<= X_{i} {HI}))"]
    lines.append(f"(assert (>= Y_0 (+ Y_1 {threshold})))")
    path.write_text("\n".join(lines) + "\n")
    return path


def margin_quantile(model: Path, q: float) -> float:
    """The q-quantile of y0 - y1 over the box: the unsafe set then holds ~(1 - q) of it."""
    net = import_network(load_model(model))
    x = np.random.default_rng(1).uniform(LO, HI, (4000, 2)).astype(np.float32)
    y = run_batch(str(model), net.input, x)
    return float(np.quantile(y[:, 0] - y[:, 1], q))


def ort_unsafe(model: Path, spec: Path, x: np.ndarray) -> np.ndarray:
    net = import_network(load_model(model))
    y = run_batch(str(model), net.input, np.asarray(x, np.float32)).astype(np.float64)
    return read_vnnlib(spec).cases[0].is_unsafe(y)


def characterized(tmp: Path, timeout: float, pattern_timeout: float) -> dict[str, Any]:
    """A 2-16-16-2 net whose property fails on about 10% of the box, characterized into
    ``tmp/regions.json`` (shared with ``test_regions_bundle``)."""
    model = save_model(mlp_model([2, 16, 16, 2], seed=3), tmp / "net.onnx")
    spec = write_spec(tmp / "p.vnnlib", round(margin_quantile(model, 0.9), 4))
    out = tmp / "regions.json"
    state, data = characterize_model(
        model, spec, out, timeout=timeout, pattern_timeout=pattern_timeout
    )
    return {"model": model, "spec": spec, "out": out, "state": state, "data": data, "tmp": tmp}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return characterized(tmp_path_factory.mktemp("characterize"), 4.0, 4.0)


def boxes(data: dict[str, Any], status: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [b for b in data["boxes"] if b["status"] == status]
    return np.array([b["lo"] for b in rows]).reshape(-1, 2), np.array(
        [b["hi"] for b in rows]
    ).reshape(-1, 2)


def test_partition_covers_the_box_and_volumes_add_up(run: dict[str, Any]) -> None:
    data = run["data"]
    vol = data["volume"]
    assert vol["safe"] + vol["unsafe"] + vol["undecided"] == pytest.approx(1.0)
    assert 0.5 < vol["safe"] < 1.0  # most of the box is safe, not all of it
    assert vol["unsafe"] > 0  # the violation was found
    lo = np.array([b["lo"] for b in data["boxes"]])
    hi = np.array([b["hi"] for b in data["boxes"]])
    x = np.random.default_rng(0).uniform(LO, HI, (5000, 2))
    assert boxes_contain(lo, hi, x).all()
    assert np.prod(hi - lo, axis=1).sum() == pytest.approx((HI - LO) ** 2)
    assert json.loads(run["out"].read_text())["volume"] == vol  # what was written


def test_safe_boxes_survive_dense_sampling_in_onnxruntime(run: dict[str, Any]) -> None:
    lo, hi = boxes(run["data"], "safe")
    rng = np.random.default_rng(2)
    pick = rng.integers(0, len(lo), 30_000)
    x = rng.random((pick.size, 2))
    samples = inside32(lo[pick] + x * (hi[pick] - lo[pick]), lo[pick], hi[pick])
    corners = np.concatenate([lo, hi, np.stack([lo[:, 0], hi[:, 1]], 1)])
    samples = np.concatenate([samples, inside32(corners, corners, corners)])
    assert not ort_unsafe(run["model"], run["spec"], samples).any()


def test_every_counterexample_is_unsafe_in_onnxruntime_and_inside_its_box(
    run: dict[str, Any],
) -> None:
    unsafe = [b for b in run["data"]["boxes"] if b["status"] == "unsafe"]
    assert unsafe
    x = np.array([b["counterexample"]["input"] for b in unsafe], np.float32)
    assert ort_unsafe(run["model"], run["spec"], x).all()
    lo, hi = boxes(run["data"], "unsafe")
    assert np.all((x >= lo) & (x <= hi))


def test_safe_boxes_carry_the_pattern_their_proof_used(run: dict[str, Any]) -> None:
    """Every input of a safe box has the signs its pattern claims (sampled, float64)."""
    steps = steps_of(import_network(load_model(run["model"])))
    rng = np.random.default_rng(4)
    safe = [b for b in run["data"]["boxes"] if b["status"] == "safe"][:200]
    for b in safe:
        signs = np.array([{"+": 1, "-": -1, ".": 0}[c] for c in b["pattern"]], np.int8)
        assert signs.size == 32 and np.count_nonzero(signs) > 0
        x = np.array(b["lo"]) + rng.random((50, 2)) * (np.array(b["hi"]) - np.array(b["lo"]))
        assert pattern_holds(steps, x, signs).all()


def test_patterns_imply_the_property_by_sampling(run: dict[str, Any]) -> None:
    data = run["data"]
    items = data["patterns"]["items"]
    assert items, "no pattern found"
    steps = steps_of(import_network(load_model(run["model"])))
    x = np.random.default_rng(5).uniform(LO, HI, (40_000, 2))
    total = 0
    for p in items:
        signs = np.zeros(32, np.int8)
        for layer, idx, sign in p["neurons"]:
            signs[16 * layer + idx] = 1 if sign == "+" else -1
        inside = pattern_holds(steps, x, signs)
        total += int(inside.sum())
        if inside.any():
            x32 = inside32(x[inside], np.full(2, LO), np.full(2, HI))
            assert not ort_unsafe(run["model"], run["spec"], x32).any(), p
        for i in p["covers_boxes"]:  # covered boxes lie inside the pattern's region
            b = data["boxes"][i]
            assert b["status"] == "safe"
            pts = np.array(b["lo"]) + 0.5 * (np.array(b["hi"]) - np.array(b["lo"]))
            assert pattern_holds(steps, pts[None], signs)[0]
    assert total > 0


def test_a_pattern_that_does_not_imply_the_property_is_not_proved(run: dict[str, Any]) -> None:
    """The activation pattern at a counterexample holds on an unsafe input: never proved."""
    net = import_network(load_model(run["model"]))
    steps = steps_of(net)
    case = read_vnnlib(run["spec"]).cases[0]
    prover = _Prover(steps, case, run["state"].layers)
    cex = next(b for b in run["data"]["boxes"] if b["status"] == "unsafe")["counterexample"]
    from relugate.passes.analysis.lp_encoding import forward_steps

    acts = forward_steps(steps, np.array([cex["input"]]))
    pre = np.concatenate([acts[j] for j, _ in run["state"].layers], axis=1)[0]
    full = np.where(pre >= 0, 1, -1).astype(np.int8)
    empty = np.zeros_like(full)
    assert not prover.prove(np.stack([full, empty])).any()
    assert not prover.prove_milp(full, 5.0)


def test_resume_continues_from_the_file(tmp_path: Path) -> None:
    model = save_model(mlp_model([2, 16, 16, 2], seed=3), tmp_path / "net.onnx")
    spec = write_spec(tmp_path / "p.vnnlib", round(margin_quantile(model, 0.9), 4))
    out = tmp_path / "r.json"
    characterize_model(model, spec, out, timeout=0.3, pattern_timeout=0)
    before = json.loads(out.read_text())
    safe_before = {
        (tuple(b["lo"]), tuple(b["hi"])) for b in before["boxes"] if b["status"] == "safe"
    }
    _, data = characterize_model(model, spec, out, timeout=1.5, pattern_timeout=0, resume=True)
    assert data["boxes_processed"] > before["boxes_processed"]
    assert data["seconds"] > before["seconds"]
    assert data["volume"]["safe"] >= before["volume"]["safe"]
    safe_after = {(tuple(b["lo"]), tuple(b["hi"])) for b in data["boxes"] if b["status"] == "safe"}
    assert safe_before <= safe_after  # closed boxes stay as they were
    other = save_model(mlp_model([2, 16, 16, 2], seed=4), tmp_path / "other.onnx")
    with pytest.raises(BadSpec, match="another model"):
        characterize_model(other, spec, out, timeout=0.1, pattern_timeout=0, resume=True)


def test_interval_baseline_is_sound_and_a_property_that_holds_is_complete(tmp_path: Path) -> None:
    model = save_model(mlp_model([2, 16, 16, 2], seed=3), tmp_path / "net.onnx")
    spec = write_spec(tmp_path / "p.vnnlib", 1000.0, lo=[LO, 0.25])  # unreachable
    state, data = characterize_model(model, spec, None, timeout=10, pattern_timeout=0)
    assert state.complete and data["volume"]["safe"] == pytest.approx(1.0)
    spec2 = write_spec(tmp_path / "q.vnnlib", round(margin_quantile(model, 0.9), 4))
    _, data2 = characterize_model(model, spec2, None, timeout=1.0, method="interval")
    assert data2["volume"]["unsafe"] == 0.0 and not data2["patterns"]
    lo, hi = boxes(data2, "safe")
    if len(lo):
        x = inside32((lo + hi) / 2, lo, hi)
        assert not ort_unsafe(model, spec2, x).any()


def test_runtime_regions_contains(run: dict[str, Any]) -> None:
    regions = load_regions(run["out"])
    lo, hi = boxes(run["data"], "safe")
    assert regions.contains((lo + hi) / 2).all()
    assert regions.contains(((lo + hi) / 2)[0]).shape == (1,)
    cex = [b["counterexample"]["input"] for b in run["data"]["boxes"] if b["status"] == "unsafe"]
    assert not regions.contains(np.array(cex, np.float32)).any()
    assert regions.contains(np.array([[1e6, 1e6]])).tolist() == [False]
    with pytest.raises(BadInput):
        regions.contains(np.zeros((4, 3)))
    with pytest.raises(BadInput):
        regions.contains(np.array([[np.nan, 0.0]]))
    bad = run["tmp"] / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(BundleError):
        load_regions(bad)


def test_runtime_regions_needs_only_numpy() -> None:
    code = (
        "import sys, relugate.runtime.regions\n"
        "bad = [m for m in ('onnx', 'scipy', 'onnxruntime', 'z3') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_writes_regions_and_plot(run: dict[str, Any], tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = ["characterize", run["model"], "--spec", run["spec"], "-o", out, "--timeout", "1"]
    args += ["--pattern-timeout", "1"]
    result = invoke(*args, "--plot", png, "--dims", "1,0")
    assert result.exit_code == 0, result.output
    assert says(result.stdout, "safe", "of the input box", "wrote")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out.read_text())["format"] == "relugate-regions/1"
    again = invoke(*args)
    assert again.exit_code == 5 and says(again.stderr, "--resume or --force")
    assert invoke(*args, "--resume").exit_code == 0
    nested = tmp_path / "new" / "folder" / "r.json"  # missing folders are created
    assert invoke(*args[:5], nested, *args[6:]).exit_code == 0 and nested.is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dims", "0,0"], "two different inputs"),
        (["--dims", "0,7"], "input 7 does not exist"),
        (["--dims", "a,b"], "two input indices"),
        (["--method", "magic"], "method must be one of"),
    ],
)
def test_cli_bad_options_are_errors(
    run: dict[str, Any], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "r.json"
    args = ["characterize", run["model"], "--spec", run["spec"], "-o", out, "--timeout", "0.2"]
    result = invoke(*args, "--plot", tmp_path / "p.png", *extra)
    assert result.exit_code == 3, result.output
    assert says(result.stderr, message)
    assert_no_traceback(result.output)
    assert not out.exists()


def test_cli_bad_spec_is_an_error(run: dict[str, Any], tmp_path: Path) -> None:
    spec = tmp_path / "three.vnnlib"  # three inputs for a two-input model
    spec.write_text(
        "\n".join(f"(declare-const X_{i} Real)" for i in range(3))
        + "\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        + "\n".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))" for i in range(3))
        + "\n(assert (>= Y_0 Y_1))\n"
    )
    result = invoke("characterize", run["model"], "--spec", spec, "-o", tmp_path / "r.json")
    assert result.exit_code == 3 and says(result.stderr, "3 inputs")
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(assert (<= X_0")
    result = invoke("characterize", run["model"], "--spec", broken, "-o", tmp_path / "r.json")
    assert result.exit_code == 3
    assert_no_traceback(result.output)


def test_several_cases_are_characterized_each_on_its_box(tmp_path: Path) -> None:
    model = save_model(mlp_model([2, 16, 16, 2], seed=3), tmp_path / "net.onnx")
    t = round(margin_quantile(model, 0.9), 4)
    spec = tmp_path / "two.vnnlib"
    spec.write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
        "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (or (and (>= X_0 -1) (<= X_0 0) (>= X_1 -1) (<= X_1 1))\n"
        "            (and (>= X_0 0.5) (<= X_0 1) (>= X_1 0) (<= X_1 0.25))))\n"
        f"(assert (>= Y_0 (+ Y_1 {t})))\n"
    )
    _, data = characterize_model(model, spec, None, timeout=2.0, pattern_timeout=1.0)
    assert len(data["cases"]) == 2
    for c, case in enumerate(data["cases"]):
        vol = case["volume"]
        assert vol["safe"] + vol["unsafe"] + vol["undecided"] == pytest.approx(1.0)
        mine = [b for b in data["boxes"] if b["case"] == c]
        lo, hi = np.array([b["lo"] for b in mine]), np.array([b["hi"] for b in mine])
        assert np.all(lo >= case["box"]["lo"]) and np.all(hi <= case["box"]["hi"])
    lo, hi = boxes(data, "safe")
    x = inside32((lo + hi) / 2, lo, hi)
    assert not ort_unsafe(model, spec, x).any()


def test_an_interrupted_run_leaves_a_checkpoint_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relugate.compiler.characterize_run as runner

    monkeypatch.setattr(runner, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(runner, "WRITE_COST_FACTOR", 0.0)  # a checkpoint after every round
    model = save_model(mlp_model([2, 16, 16, 2], seed=3), tmp_path / "net.onnx")
    spec = write_spec(tmp_path / "p.vnnlib", round(margin_quantile(model, 0.9), 4))
    out = tmp_path / "r.json"
    rounds = []

    def interrupt(state: Any) -> None:
        rounds.append(state.processed)
        if len(rounds) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        characterize_model(model, spec, out, timeout=30, pattern_timeout=0, on_round=interrupt)
    saved = json.loads(out.read_text())
    assert saved["boxes_processed"] == rounds[1] and not saved["complete"]
    assert not list(tmp_path.glob(".r.json.tmp-*"))  # no half-written file left
    _, data = characterize_model(model, spec, out, timeout=0.5, pattern_timeout=0, resume=True)
    assert data["boxes_processed"] > rounds[1]


@pytest.mark.slow
def test_benchmark_row_on_acas_is_sound(benchmarks: Path) -> None:
    """The benchmark on one violated ACAS Xu prop 2 instance, on a small budget."""
    from benchmarks.characterize import markdown, run_one

    row = run_one("1_4", seconds=3, pattern_seconds=3, samples=20_000)
    assert row["safe"] > row["baseline_safe"]
    assert row["safe_samples"] == 20_000 and row["safe_samples_unsafe"] == 0
    assert row["safe_samples_outside_boxes"] == 0 and row["pattern_samples_unsafe"] == 0
    assert row["counterexamples_confirmed"] == row["counterexamples"]
    assert "| 1_4 |" in markdown([row], {"seconds": 3})


def test_a_network_without_relu_is_characterized_without_patterns(tmp_path: Path) -> None:
    model = save_model(mlp_model([2, 2], seed=1), tmp_path / "linear.onnx")
    spec = write_spec(tmp_path / "p.vnnlib", round(margin_quantile(model, 0.5), 4))
    _, data = characterize_model(model, spec, None, timeout=1.0, pattern_timeout=1.0)
    assert data["patterns"]["items"] == [] and data["relu_layers"] == []
    assert data["volume"]["safe"] > 0 and data["volume"]["unsafe"] > 0
    lo, hi = boxes(data, "safe")
    assert not ort_unsafe(model, spec, inside32((lo + hi) / 2, lo, hi)).any()


def test_a_box_too_thin_to_split_is_left_undecided_not_split_forever(tmp_path: Path) -> None:
    """A point box whose output sits exactly on the unsafe set's boundary: CROWN cannot
    decide it and it cannot be bisected; it stays one box, marked stuck."""
    model = save_model(mlp_model([2, 16, 16, 2], seed=3), tmp_path / "net.onnx")
    point = np.array([[0.25, -0.5]], np.float32)
    net = import_network(load_model(model))
    y = run_batch(str(model), net.input, point)[0].astype(np.float64)
    spec = tmp_path / "point.vnnlib"
    spec.write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
        "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (>= X_0 0.25))\n(assert (<= X_0 0.25))\n"
        "(assert (>= X_1 -0.5))\n(assert (<= X_1 -0.5))\n"
        f"(assert (>= Y_0 (+ Y_1 {float(y[0] - y[1])!r})))\n"
    )
    out = tmp_path / "r.json"
    state, data = characterize_model(model, spec, out, timeout=30, pattern_timeout=0)
    assert state.complete and len(data["boxes"]) == 1
    box = data["boxes"][0]
    assert box.get("stuck") or box.get("proved_unsafe") or box["status"] == "safe"
    vol = data["volume"]
    assert vol["safe"] + vol["unsafe"] + vol["undecided"] == pytest.approx(1.0)
    _, again = characterize_model(model, spec, out, timeout=1, pattern_timeout=0, resume=True)
    assert again["boxes"] == data["boxes"]
