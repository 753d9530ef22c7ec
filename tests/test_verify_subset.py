"""Rerunning a subset of the verification benchmark keeps the other rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import verify as bench
from benchmarks import verify_subset


def row(net: str, spec: str, verdict: str, seconds: float = 1.0) -> dict[str, Any]:
    return {
        "network": net,
        "spec": spec,
        "timeout": 300.0,
        "verdict": verdict,
        "method": "timeout" if verdict == "unknown" else "crown",
        "seconds": seconds,
        "boxes": 0,
        "folder": "mnistfc",
    }


OLD = [row("a.onnx", "p0.vnnlib", "holds"), row("a.onnx", "p1.vnnlib", "unknown", 300.0)]
OLD += [row("b.onnx", "p1.vnnlib", "unknown", 300.0)]


def write(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return path


def test_select_by_name_and_by_earlier_unknowns(tmp_path: Path) -> None:
    all_ = [(Path(r["network"]), Path(r["spec"]), 300.0) for r in OLD]
    names = [f"{m}:{s}" for m, s, _ in verify_subset.select(all_, ["p1"], None)]
    assert names == ["a.onnx:p1.vnnlib", "b.onnx:p1.vnnlib"]
    unknown = verify_subset.unknown_in(write(tmp_path / "old.json", OLD, {}))
    assert unknown == {"a.onnx:p1.vnnlib", "b.onnx:p1.vnnlib"}
    both = verify_subset.select(all_, ["b.onnx"], unknown)
    assert [(m.name, s.name) for m, s, _ in both] == [("b.onnx", "p1.vnnlib")]
    assert verify_subset.select(all_, ["nothing"], None) == []


def test_merge_replaces_rerun_rows_in_place_and_keeps_the_rest(tmp_path: Path) -> None:
    new = [{**row("b.onnx", "p1.vnnlib", "violated", 0.2), "rerun": "2026-11-23 23:00 UTC"}]
    new.append(row("c.onnx", "p9.vnnlib", "holds"))
    meta, rows = bench._merged(write(tmp_path / "r.json", OLD, {"date": "d0"}), {"date": "d1"}, new)
    assert [r["verdict"] for r in rows] == ["holds", "unknown", "violated", "holds"]
    assert rows[:2] == OLD[:2] and rows[3]["network"] == "c.onnx"
    assert meta["date"] == "d0" and meta["reruns"] == [{"date": "d1"}]
    text = bench.markdown(rows, {**meta, "relugate": "x", "machine": "m", "limit_seconds": 1})
    assert "| rerun |" in text and "| 2026-11-23 23:00 UTC |" in text
    assert text.count("| - |\n") >= 3  # rows not rerun say so
    assert "| mnistfc | 4 | 2 | 1 | 1 | 0 |" in text


def test_a_full_run_has_no_rerun_column() -> None:
    meta = {"relugate": "x", "machine": "m", "date": "d", "limit_seconds": 1}
    assert "rerun" not in bench.markdown(OLD, meta)
