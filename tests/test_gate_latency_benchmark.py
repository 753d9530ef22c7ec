"""The gate latency benchmark end to end on one public instance (test_sat, whose gate
fires on every input): both bundles run, the figures are positive, every row fired."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import gate_latency

SAT = gate_latency.SHARED / "vnncomp2021_test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SAT / "test_sat.onnx").is_file(), reason="needs ../shared/benchmarks"),
]


def test_one_instance(tmp_path: Path) -> None:
    row = gate_latency.measure(SAT / "test_sat.onnx", [SAT / "test_prop.vnnlib"], tmp_path, 1)
    assert row["gates"] >= 1
    for batch in gate_latency.BATCHES:
        cell = row[f"b{batch}"]
        assert min(cell["us_per_call"].values()) > 0
        assert cell["rows_fired"] == batch
    text = gate_latency.markdown([row], {"relugate": "x", "machine": "m", "date": "d", "rounds": 1})
    assert "test_sat.onnx" in text
