"""Every public benchmark network: ``inspect`` and ``compile`` succeed, and the
compiled model matches onnxruntime on the original within 1e-5 on 1,000
random inputs (plus the corners and center) from each spec's input box."""

from __future__ import annotations

import csv
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import benchmarks_dir

from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.inspect import inspect_model
from relugate.compiler.network import TensorSpec
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_batch
from relugate.compiler.spec import read_vnnlib

pytestmark = pytest.mark.benchmarks


def instances() -> list[tuple[str, str]]:
    root = benchmarks_dir()
    rows = []
    for table in sorted(root.glob("*/instances.csv")):
        with table.open() as fh:
            for onnx_file, spec_file, _ in csv.reader(fh):
                rows.append((str(table.parent / onnx_file), str(table.parent / spec_file)))
    return rows


def networks() -> list[str]:
    return sorted({model for model, _ in instances()})


def short(path: str) -> str:
    return Path(path).name


@cache
def compiled(model: str, out_root: str) -> tuple[onnx.ModelProto, TensorSpec, dict]:
    """Compile once per network, on the hull of its specs' boxes (stable_relu makes the
    compiled model equivalent on the domain only), and keep the result.  Without gates:
    they change outputs on purpose (tests/test_gates.py and benchmarks/gates.py cover them)."""
    specs = [s for m, s in instances() if m == model]
    out = Path(out_root) / Path(model).stem
    result = compile_model(model, CompileOptions(out_dir=out, gates=False), specs=specs)
    exported = onnx.load(str(out / "model.onnx"))
    net_in = result.network.input
    return (
        exported,
        TensorSpec(net_in.name, net_in.shape, net_in.has_batch, net_in.batch_dim),
        result.report,
    )


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory, benchmarks: Path) -> str:
    return str(tmp_path_factory.mktemp("compiled"))


@pytest.mark.parametrize("model", networks() or ["<none>"], ids=short)
def test_inspect_and_compile(model: str, out_root: str) -> None:
    info = inspect_model(model)
    assert info["supported"], info.get("reason")
    exported, _, report = compiled(model, out_root)
    assert report["after"]["relus"] <= info["stats"]["relus"]
    assert report["check"]["max_relative_error"] <= TOLERANCE
    for step in report["passes"]:
        assert {"relus_before", "relus_after", "params_before", "params_after"} <= step.keys()
    assert [i.name for i in exported.graph.input] == [info["inputs"][0]["name"]]
    assert [o.name for o in exported.graph.output] == [info["outputs"][0]["name"]]


@pytest.mark.parametrize(
    "instance", instances() or [("<none>", "<none>")], ids=lambda i: f"{short(i[0])}-{short(i[1])}"
)
def test_compiled_matches_original_on_spec_box(instance: tuple[str, str], out_root: str) -> None:
    model, spec = instance
    exported, spec_in, _ = compiled(model, out_root)
    box = read_vnnlib(spec).domain()
    rng = np.random.default_rng(zlib.crc32("|".join(instance).encode()))
    x = np.concatenate([box.corners_and_center(), box.sample(1000, rng)]).astype(np.float32)
    reference = run_batch(model, spec_in, x)
    ours = run_batch(exported, spec_in, x)
    assert reference.shape == ours.shape == (len(x), reference.shape[1])
    assert mismatch(reference, ours).max() <= TOLERANCE
