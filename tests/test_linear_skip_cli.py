"""``relugate compile --linear-skip``: the skip path reaches users end to end. The bundle's
model.onnx holds the skip subgraph, the TVM library and onnxruntime agree with the
original on the domain, and without the option the network keeps its ReLU units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import invoke
from test_linear_skip import BOX3, block_net
from tvm_helpers import reference

from relugate.compiler.exporter import to_onnx

pytest.importorskip("tvm")


def compile_block(tmp_path: Path, *flags: str) -> tuple[Path, Path]:
    original = tmp_path / "block.onnx"
    onnx.save(to_onnx(block_net()), str(original))
    out = tmp_path / ("skip" if flags else "plain")
    result = invoke("compile", original, "-o", out, "--input-box=0,1", *flags)
    assert result.exit_code == 0, result.output
    return original, out


def test_linear_skip_option_ships_a_skip_and_the_bundle_matches(tmp_path: Path) -> None:
    import relugate.runtime as rt

    original, out = compile_block(tmp_path, "--linear-skip", "--stability", "crown")
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("Relu") == 1 and "Add" in ops  # 6 units -> 2 in the ReLU + a skip
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["relus"] == 2
    rng = np.random.default_rng(0)
    x = np.concatenate([BOX3.corners_and_center(), BOX3.sample(2000, rng)]).astype(np.float32)
    want = reference(onnx.load(str(original)), x)
    got = rt.load(out).run(x)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_without_the_option_active_units_stay(tmp_path: Path) -> None:
    _, out = compile_block(tmp_path, "--stability", "crown")
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["relus"] > 2  # only linearly dependent active units can go
    assert "Add" not in [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
