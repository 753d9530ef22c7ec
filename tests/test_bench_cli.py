"""``relugate bench``: the bundle against its original, side by side; clear errors on bad
batch lists and on a missing original."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import invoke

pytest.importorskip("tvm")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "collision.onnx"


def test_bench_times_three_engines_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    built = invoke("compile", EXAMPLE, "-o", out, "--input-box=0,1")
    assert built.exit_code == 0, built.output
    report = tmp_path / "bench.json"
    args = ["--original", EXAMPLE, "--batches", "1,16", "--rounds", "1", "--json", report]
    result = invoke("bench", out, *args)
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    assert {(r["engine"], r["batch"]) for r in rows} == {
        (e, b) for e in ("onnxruntime original", "TVM original", "bundle") for b in (1, 16)
    }
    assert all(r["us_per_call"] > 0 and r["rows_per_second"] > 0 for r in rows)
    assert all(r["ratio_to_onnxruntime"] == 1.0 for r in rows if r["engine"].startswith("onnx"))
    assert "rows per second" in result.output


@pytest.mark.parametrize("batches", ["0", "1,x", ""])
def test_bad_batch_lists_are_refused(tmp_path: Path, batches: str) -> None:
    result = invoke("bench", tmp_path, "--original", EXAMPLE, "--batches", batches)
    assert result.exit_code == 3 and "--batches" in result.output
