"""Proved-safe input regions at runtime: does an input lie in a box that
``relugate characterize`` proved safe?  (Then no output gate can fire for it:
the original network's output is already safe there.)

    regions = load_regions("regions.json")
    mask = regions.contains(x)        # x: (n, ...) or one input; bool per row

Numpy only.  The boxes hold every float32 input between their bounds (the
proof covered the float32 values of each box), so the test is a plain
``lo <= x <= hi`` on the flattened input, in float64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relugate.runtime.errors import BadInput, BundleError

FORMAT = "relugate-regions/1"
CHUNK_ELEMENTS = 4_000_000
"""Rows x boxes x inputs compared at once (bounds memory)."""


def boxes_contain(lo: np.ndarray, hi: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row of ``x`` (k, n): inside at least one box ``[lo[b], hi[b]]`` (boxes (B, n))?"""
    found = np.zeros(len(x), bool)
    if not len(lo) or not len(x):
        return found
    step = max(1, int(CHUNK_ELEMENTS // max(1, len(x) * lo.shape[1])))
    for s in range(0, len(lo), step):
        blo, bhi = lo[s : s + step], hi[s : s + step]
        inside = np.all((x[:, None, :] >= blo[None]) & (x[:, None, :] <= bhi[None]), axis=2)
        found |= inside.any(axis=1)
    return found


@dataclass(frozen=True)
class SafeRegions:
    """The proved-safe boxes of a regions file (all cases together)."""

    lo: np.ndarray  # (B, n)
    hi: np.ndarray  # (B, n)
    n_inputs: int
    volume: float  # share of the property's box proved safe

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Bool per row: is the input inside a proved-safe box?  ``x`` is one input
        (``n`` values in any shape) or a batch ``(k, ...)`` of them."""
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number):
            raise BadInput(f"inputs must be numbers, not {arr.dtype}")
        flat = arr.astype(np.float64).reshape(-1)
        if arr.size == self.n_inputs:
            rows = flat.reshape(1, -1)
        elif arr.ndim >= 2 and arr.size % self.n_inputs == 0 and arr[0].size == self.n_inputs:
            rows = flat.reshape(len(arr), self.n_inputs)
        else:
            raise BadInput(
                f"input of shape {arr.shape} does not hold rows of {self.n_inputs} values"
            )
        if not np.all(np.isfinite(rows)):
            raise BadInput("inputs hold NaN or Inf")
        return boxes_contain(self.lo, self.hi, rows)


def load_regions(path: str | Path) -> SafeRegions:
    """Read the safe boxes of ``regions.json``; a file of another kind raises ``BundleError``."""
    where = Path(path)
    try:
        data = json.loads(where.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read regions file {where}: {exc}") from exc
    return parse_regions(data, where)


def parse_regions(data: Any, where: str | Path) -> SafeRegions:
    """The safe boxes of a parsed regions file (``where`` names it in errors)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{where} is not a relugate regions file ({FORMAT})")
    try:
        n = len(data["cases"][0]["box"]["lo"])
        safe = [b for b in data["boxes"] if b["status"] == "safe"]
        lo = np.array([b["lo"] for b in safe], np.float64).reshape(-1, n)
        hi = np.array([b["hi"] for b in safe], np.float64).reshape(-1, n)
        volume = float(data["volume"]["safe"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: malformed regions file ({exc})") from exc
    return SafeRegions(lo, hi, n, volume)
