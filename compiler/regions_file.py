"""``regions.json``: a characterization written to disk, read back to resume it.

One object: ``format``, the model and spec (path, sha256), the method, the
time spent, the volume fractions (safe / unsafe / undecided, per case and
overall), the ReLU layers (analysis step, neurons) that patterns refer to,
``boxes`` (every leaf: case, status, lo, hi; safe boxes with their activation
``pattern``, one character per ReLU in layer order: ``+`` active, ``-``
inactive, ``.`` unstable; unsafe boxes with their ``counterexample`` input and
onnxruntime output and ``proved_unsafe``; ``stuck`` on boxes too thin to bisect)
and ``patterns`` (see ``characterize_patterns``).  Floats are written with ``repr`` precision, so a
resumed run continues from exactly the same boxes.  The file is replaced
atomically (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from relugate.compiler.errors import BadSpec, BundleError
from relugate.passes.analysis.characterize import (
    OPEN,
    SAFE,
    STATUS,
    UNSAFE,
    Characterization,
    Leaves,
)

FORMAT = "relugate-regions/1"
_CODES = {name: code for code, name in STATUS.items()}
_SIGN = {1: "+", -1: "-", 0: "."}


def encode_pattern(row: np.ndarray) -> str:
    return "".join(_SIGN[int(v)] for v in row)


def decode_pattern(text: str, size: int) -> np.ndarray:
    if len(text) != size or set(text) - set("+-."):
        raise BadSpec(f"regions file: pattern {text[:40]!r} is not {size} of '+', '-', '.'")
    return np.array([{"+": 1, "-": -1, ".": 0}[c] for c in text], np.int8)


def to_json(state: Characterization, header: dict[str, Any], patterns: Any) -> dict[str, Any]:
    lv = state.leaves
    boxes = []
    for i in range(lv.count):
        box: dict[str, Any] = {
            "case": int(lv.case[i]),
            "status": STATUS[int(lv.status[i])],
            "lo": lv.lo[i].tolist(),
            "hi": lv.hi[i].tolist(),
        }
        if lv.status[i] == SAFE:
            box["pattern"] = encode_pattern(lv.pattern[i])
        if lv.stuck[i]:
            box["stuck"] = True  # too thin to bisect: stays as it is
        if lv.status[i] == UNSAFE:
            box["proved_unsafe"] = bool(lv.proved_unsafe[i])
            box["counterexample"] = {
                "input": lv.witness[i].astype(float).tolist(),
                "output": lv.output[i].tolist(),
            }
        boxes.append(box)
    return {
        "format": FORMAT,
        **header,
        "method": state.method,
        "seconds": round(state.seconds, 3),
        "boxes_processed": state.processed,
        "complete": state.complete,
        "volume": state.fractions(),
        "cases": [
            {"box": case.box.to_json(), "volume": state.fractions(c)}
            for c, case in enumerate(state.prop.cases)
        ],
        "relu_layers": [{"step": j, "neurons": n} for j, n in state.layers],
        "boxes": boxes,
        "patterns": patterns,
    }


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON beside ``path`` and rename it into place: readers never see half a file."""
    tmp = path.absolute().parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BadSpec(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise BadSpec(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadSpec(f"{path} is not a relugate regions file ({FORMAT})")
    return data


def resume_leaves(data: dict[str, Any], state: Characterization, where: Path) -> None:
    """Put the boxes of ``data`` into ``state`` (a fresh one for the same model and spec)."""
    sizes = [(j, n) for j, n in state.layers]
    if [[d["step"], d["neurons"]] for d in data["relu_layers"]] != [list(s) for s in sizes]:
        raise BadSpec(f"{where}: its ReLU layers do not match the model")
    n, m = state.prop.n_inputs, state.prop.n_outputs
    width = sum(n_ for _, n_ in sizes)
    rows = data["boxes"]
    try:
        lv = Leaves(
            np.array([b["case"] for b in rows], np.int64),
            np.array([b["lo"] for b in rows], np.float64).reshape(-1, n),
            np.array([b["hi"] for b in rows], np.float64).reshape(-1, n),
            np.array([_CODES[b["status"]] for b in rows], np.int8),
            np.array([bool(b.get("proved_unsafe", False)) for b in rows], bool),
            np.zeros((len(rows), width), np.int8),
            np.full((len(rows), n), np.nan, np.float32),
            np.full((len(rows), m), np.nan),
            np.array([bool(b.get("stuck", False)) for b in rows], bool),
        )
        for i, b in enumerate(rows):
            if lv.status[i] == SAFE:
                lv.pattern[i] = decode_pattern(b["pattern"], width)
            elif lv.status[i] == UNSAFE:
                lv.witness[i] = np.array(b["counterexample"]["input"], np.float32)
                lv.output[i] = np.array(b["counterexample"]["output"], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadSpec(f"{where}: malformed box ({exc})") from exc
    if lv.count and (lv.case.min() < 0 or lv.case.max() >= len(state.prop.cases)):
        raise BadSpec(f"{where}: a box names a case the spec does not have")
    lv.status[(lv.status == UNSAFE) & np.isnan(lv.witness[:, 0])] = OPEN
    state.leaves = lv
    state.seconds = float(data.get("seconds", 0.0))
    state.processed = int(data.get("boxes_processed", 0))
