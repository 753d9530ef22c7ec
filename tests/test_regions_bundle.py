"""A characterization shipped in a bundle (``compile --regions``): the runtime marks the
rows inside proved-safe boxes and counts them; a regions file of another model is refused."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from cli_helpers import invoke
from conftest import mlp_model, save_model
from test_characterize import characterized as characterize_net

pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def characterized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = characterize_net(tmp_path_factory.mktemp("regions_bundle"), 3.0, 1.0)
    return {**run, "regions": run["out"]}


def test_runtime_reports_rows_in_proved_safe_regions(characterized: dict[str, Any]) -> None:
    import relugate.runtime as rt

    out = characterized["tmp"] / "bundle"
    args = [characterized["model"], "--spec", characterized["spec"], "-o", out]
    result = invoke("compile", *args, "--regions", characterized["regions"], "--gate-timeout", "5")
    assert result.exit_code == 0, result.output
    assert "regions.json" in json.loads((out / "manifest.json").read_text())["files"]
    data = json.loads(characterized["regions"].read_text())
    safe = [b for b in data["boxes"] if b["status"] == "safe"]
    inside = np.array([(np.array(b["lo"]) + np.array(b["hi"])) / 2 for b in safe[:50]])
    others = [b for b in data["boxes"] if b["status"] != "safe"]
    outside = np.array([(np.array(b["lo"]) + np.array(b["hi"])) / 2 for b in others[:50]])
    model = rt.load(out)
    x = np.concatenate([inside, outside]).astype(np.float32)
    result_rows = model.run_detailed(x)
    assert result_rows.in_safe_region is not None
    assert result_rows.in_safe_region[: len(inside)].all()
    assert not result_rows.in_safe_region[len(inside) :].any()
    stats = model.stats()
    assert stats["region_checked"] == len(x) and stats["in_safe_region"] == len(inside)
    assert stats["gate_fired_in_safe_region"] == 0


def test_regions_of_another_model_are_refused(characterized: dict[str, Any]) -> None:
    other = save_model(mlp_model([2, 16, 16, 2], seed=4), characterized["tmp"] / "other.onnx")
    out = characterized["tmp"] / "refused"
    args = [other, "--spec", characterized["spec"], "-o", out, "--target", "none"]
    result = invoke("compile", *args, "--regions", characterized["regions"])
    assert result.exit_code == 3, result.output
    assert "another model" in result.output and not out.exists()
