"""``compile --mcpu``: the library is built for the named CPU, recorded in the manifest,
and still runs here (a portable amd64 image needs a CPU older than the build host's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke

pytest.importorskip("tvm")

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples/collision.vnnlib"


def test_mcpu_generic_bundle_runs(tmp_path: Path) -> None:
    import relugate.runtime as rt

    out = tmp_path / "b"
    args = ["compile", str(ROOT / "examples/collision.onnx"), "--spec", str(SPEC)]
    result = invoke(*args, "-o", out, "--mcpu", "generic")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["mcpu"] == "generic"
    model = rt.load(out)
    lo, hi = (np.asarray(b, np.float32) for b in model.domain or (0.0, 1.0))
    x = np.broadcast_to((lo + hi) / 2, (3, lo.size)).reshape(3, *model.sample_shape).copy()
    assert model.run(x).shape[0] == 3


def test_unknown_mcpu_is_a_clear_error(tmp_path: Path) -> None:
    args = ["compile", str(ROOT / "examples/collision.onnx"), "--spec", str(SPEC)]
    result = invoke(*args, "-o", tmp_path / "b", "--mcpu", "no-such-cpu")
    assert result.exit_code == 3, result.output
    assert "no-such-cpu" in result.output
    assert not (tmp_path / "b").exists()
