"""Interval bound propagation (IBP), sound for float32 execution."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relugate.passes.analysis.bounds import Bounds, as_batch
from relugate.passes.analysis.steps import Affine, MaxPoolStep, ReluStep, Step, float32_box


def affine_interval(step: Affine, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    mid = step.apply(center) + step.bias()
    spread = step.apply(radius, absolute=True) + step.margin(np.maximum(np.abs(lo), np.abs(hi)))
    return mid - spread, mid + spread


def step_interval(step: Step, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on a step's output from bounds on its input."""
    if isinstance(step, Affine):
        return affine_interval(step, lo, hi)
    if isinstance(step, ReluStep):
        return np.maximum(lo, 0), np.maximum(hi, 0)
    if isinstance(step, MaxPoolStep):  # max is monotone in every argument
        return step.forward(lo), step.forward(hi)
    raise TypeError(type(step).__name__)


def interval_bounds(steps: Sequence[Step], lo: np.ndarray, hi: np.ndarray) -> Bounds:
    """IBP over boxes ``lo``/``hi`` of shape ``(boxes, n_in)`` (or one box)."""
    lo, hi = float32_box(*as_batch(lo, hi))
    los, his = [lo], [hi]
    for step in steps:
        lo, hi = step_interval(step, lo, hi)
        los.append(lo)
        his.append(hi)
    return Bounds(los, his, "interval")
