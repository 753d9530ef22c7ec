"""Rerunning some instances of the verification benchmark and merging them into the
committed results, so a table stays complete and says which rows were rerun and when.

    python -m benchmarks.verify --only mnistfc --output verify_mnistfc \
        --unknown-from benchmarks/results/verify_mnistfc.json
    python -m benchmarks.verify --only mnistfc --output verify_mnistfc \
        --instances 256x4.onnx:prop_1_0.05,256x2.onnx:prop_1_0.03
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

Instance = tuple[Path, Path, float]


def key(network: str, spec: str) -> str:
    """How an instance is named on the command line: ``network:spec``."""
    return f"{network}:{spec}"


def unknown_in(path: Path) -> set[str]:
    """The instances a results file left unknown."""
    rows = json.loads(path.read_text())["rows"]
    return {key(r["network"], r["spec"]) for r in rows if r["verdict"] == "unknown"}


def select(
    instances: list[Instance], patterns: list[str] | None, unknown: set[str] | None
) -> list[Instance]:
    """The instances whose ``network:spec`` contains one of ``patterns`` (when given)
    and that ``unknown`` names (when given)."""
    chosen = []
    for model, spec, timeout in instances:
        name = key(model.name, spec.name)
        if patterns is not None and not any(p in name for p in patterns):
            continue
        if unknown is not None and name not in unknown:
            continue
        chosen.append((model, spec, timeout))
    return chosen


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with each row that ``new`` reran replaced in place (new instances are
    appended); rows not rerun keep their own ``rerun`` mark, if any."""
    fresh = {key(r["network"], r["spec"]): r for r in new}
    rows = [fresh.pop(key(r["network"], r["spec"]), r) for r in old]
    return rows + list(fresh.values())


def previous_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"]
    return rows
