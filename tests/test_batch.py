"""verify-batch: instances.csv checks, parallel backends, output files, the CLI."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import invoke, says
from conftest import save_model

from relugate.compiler import batch
from relugate.compiler.errors import BadSpec, ModelError
from relugate.compiler.exporter import to_onnx
from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.verify import verify_model

HAS_DASK = all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))


def tiny_net(path: Path, scale: float = 1.0) -> Path:
    """y0 = s relu(x0 + x1) - s relu(x0 - x1), y1 = x0 (as in test_verify)."""
    first = Dense("h", weight=np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]), bias=np.zeros(3))
    second = Dense("o", weight=np.array([[scale, -scale, 0], [0, 0, 1.0]]), bias=np.zeros(2))
    net = Network(
        TensorSpec("x", (1, 2), True), TensorSpec("y", (1, 2), True), (first, Relu("r"), second)
    )
    return save_model(to_onnx(net), path)


def vnnlib(path: Path, lo: float, hi: float, unsafe: str) -> Path:
    lines = [f"(declare-const {v}_{i} Real)" for v in "XY" for i in range(2)]
    lines += [f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))" for i in range(2)]
    path.write_text("\n".join([*lines, f"(assert {unsafe})"]) + "\n")
    return path


INSTANCES = [  # model, spec, box, unsafe set
    ("a.onnx", "specs/p1.vnnlib", (0, 1), "(>= Y_0 2.5)"),  # holds
    ("a.onnx", "specs/p2.vnnlib", (-1, 1), "(and (>= Y_0 0.9) (<= Y_1 0.5))"),  # violated
    ("b.onnx", "specs/p3.vnnlib", (0, 1), "(<= Y_1 -0.5)"),  # holds
    ("b.onnx", "specs/p4.vnnlib", (-1, 1), "(>= Y_1 0.5)"),  # violated
]


def instances_csv(tmp_path: Path, extra: str = "") -> Path:
    root = tmp_path / "bench"
    (root / "specs").mkdir(parents=True)
    tiny_net(root / "a.onnx")
    tiny_net(root / "b.onnx", scale=2.0)
    for _, spec, (lo, hi), unsafe in INSTANCES:
        vnnlib(root / spec, lo, hi, unsafe)
    rows = [f"{m},{s},20" for m, s, _, _ in INSTANCES]
    path = root / "instances.csv"
    path.write_text("\n".join(rows) + "\n" + extra)
    return path


def direct_verdicts(csv_path: Path) -> list[str]:
    root = csv_path.parent
    return [verify_model(root / m, [root / s], timeout=20).verdict for m, s, _, _ in INSTANCES]


def test_local_pool_matches_verify_model_and_writes_results(tmp_path: Path) -> None:
    csv_path = instances_csv(tmp_path, extra="broken.onnx,specs/p1.vnnlib,20\n")
    (csv_path.parent / "broken.onnx").write_bytes(b"not an onnx file")
    out = tmp_path / "out"
    outcomes, report = batch.verify_batch(csv_path, out, backend="local", workers=2)
    expected = direct_verdicts(csv_path)
    assert expected == ["holds", "violated", "holds", "violated"]
    assert [o.verdict for o in outcomes] == [*expected, "error"]
    assert outcomes[-1].method == "ModelError" and "broken.onnx" in outcomes[-1].message
    assert report["counts"] == {"holds": 2, "violated": 2, "unknown": 0, "error": 1}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in rows] == [o.verdict for o in outcomes]
    assert set(rows[0]) == set(batch.FIELDS)
    assert len((out / "results.csv").read_text().splitlines()) == 6
    assert json.loads((out / "report.json").read_text())["workers"] == 2
    words = [p.read_text().split()[0] for p in sorted((out / "vnncomp").iterdir())]
    assert words == ["unsat", "sat", "unsat", "sat", "error"]


def test_a_malformed_row_names_its_line(tmp_path: Path) -> None:
    csv_path = instances_csv(tmp_path, extra="\na.onnx,specs/p1.vnnlib\n")
    with pytest.raises(BadSpec, match=r"line 6: expected 3 fields"):
        batch.read_instances(csv_path)
    csv_path.write_text("a.onnx,specs/p1.vnnlib,soon\n")
    with pytest.raises(BadSpec, match=r"line 1: timeout 'soon' is not a number"):
        batch.read_instances(csv_path)
    with pytest.raises(BadSpec, match="cannot read"):
        batch.read_instances(tmp_path / "absent.csv")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    csv_path = instances_csv(tmp_path, extra="gone.onnx,specs/p1.vnnlib,5\n")
    with pytest.raises(ModelError, match=r"line 5: model file 'gone.onnx' not found"):
        batch.read_instances(csv_path)
    csv_path.write_text("a.onnx,specs/gone.vnnlib,5\n")
    with pytest.raises(BadSpec, match=r"line 1: spec file 'specs/gone.vnnlib' not found"):
        batch.read_instances(csv_path)


def test_limit_and_timeout_scale(tmp_path: Path) -> None:
    found = batch.read_instances(instances_csv(tmp_path), timeout_scale=0.5, limit=3)
    assert [(i.line, i.timeout) for i in found] == [(1, 10.0), (2, 10.0), (3, 10.0)]
    assert found[0].model_path.is_absolute()


def test_an_uninstalled_backend_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask", None)  # find_spec answers None: not installed
    csv_path = instances_csv(tmp_path)
    res = invoke("verify-batch", csv_path, "-o", tmp_path / "out", "--backend", "dask")
    assert res.exit_code == 3, res.output
    assert says(res.stderr, "dask is not installed", 'pip install "relugate[distributed]"')
    res = invoke("verify-batch", csv_path, "-o", tmp_path / "out", "--backend", "mpi")
    assert res.exit_code == 3 and says(res.stderr, "--backend must be one of")
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_output_folder(tmp_path: Path) -> None:
    csv_path, out = instances_csv(tmp_path), tmp_path / "out"
    args = ("verify-batch", csv_path, "-o", out, "--backend", "local", "--workers", "1")
    res = invoke(*args, "--limit", "2")
    assert res.exit_code == 0, res.output
    assert says(res.stdout, "verify-batch: 2 instances on local", "holds", "violated")
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "report.json", "results.csv", "results.jsonl", "vnncomp"
    ]  # fmt: skip
    assert invoke(*args, "--limit", "1").exit_code == 5  # exists: needs --force
    assert invoke(*args, "--limit", "1", "--force").exit_code == 0
    assert json.loads((out / "report.json").read_text())["instances"] == 1


class Ref:
    """A hashable stand-in for a Ray ObjectRef."""

    def __init__(self, value: Any) -> None:
        self.value = value


def fake_ray() -> types.ModuleType:
    """Enough of Ray's API for the backend's plumbing, run in this process."""
    ray = types.ModuleType("ray")
    ray.__spec__ = importlib.machinery.ModuleSpec("ray", None)
    calls: dict[str, Any] = {}

    def remote(**opts: Any) -> Callable[[Callable[..., Any]], Any]:
        calls["remote"] = opts
        return lambda fn: types.SimpleNamespace(remote=lambda item: Ref(fn(item)))

    ray.init = lambda **opts: calls.setdefault("init", opts)  # type: ignore[attr-defined]
    ray.remote = remote  # type: ignore[attr-defined]
    ray.wait = lambda refs, num_returns: (refs[:num_returns], refs[num_returns:])  # type: ignore[attr-defined]
    ray.get = lambda ref: ref.value  # type: ignore[attr-defined]
    ray.shutdown = lambda: calls.setdefault("shutdown", True)  # type: ignore[attr-defined]
    ray.calls = calls  # type: ignore[attr-defined]
    return ray


def test_ray_backend_plumbing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    outcomes, report = batch.verify_batch(
        instances_csv(tmp_path), tmp_path / "out", backend="ray", workers=2
    )
    assert [o.verdict for o in outcomes] == ["holds", "violated", "holds", "violated"]
    calls = ray.calls  # type: ignore[attr-defined]
    assert calls["init"]["num_cpus"] == 2 and calls["remote"] == {"num_cpus": 1}
    assert calls["init"]["runtime_env"]["env_vars"]["OPENBLAS_NUM_THREADS"] == "1"
    assert calls["shutdown"] and report["backend"] == "ray"


@pytest.mark.skipif(not HAS_DASK, reason='dask not installed (pip install "dask[distributed]")')
def test_dask_backend_matches_verify_model(tmp_path: Path) -> None:
    csv_path = instances_csv(tmp_path)
    outcomes, report = batch.verify_batch(csv_path, tmp_path / "out", backend="auto", workers=2)
    assert report["backend"] == "dask"
    assert [o.verdict for o in outcomes] == direct_verdicts(csv_path)
