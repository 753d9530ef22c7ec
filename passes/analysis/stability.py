"""Stability report: per ReLU layer, the neurons proved always active or always
inactive on a domain, by a given bound analysis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.network import Network
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.steps import ReluStep, Step, steps_of

Analysis = Callable[[Sequence[Step], np.ndarray, np.ndarray], Bounds]

ANALYSES: dict[str, Analysis] = {"interval": interval_bounds, "crown": crown_bounds}


@dataclass(frozen=True)
class LayerStability:
    layer: str
    step: int
    total: int
    active: np.ndarray  # indices proved always active (pre-activation >= 0)
    inactive: np.ndarray  # indices proved always inactive (pre-activation <= 0)

    @property
    def unstable(self) -> int:
        return self.total - len(self.active) - len(self.inactive)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "total": self.total,
            "active": len(self.active),
            "inactive": len(self.inactive),
            "unstable": self.unstable,
        }


def stability(steps: Sequence[Step], bounds: Bounds, box_index: int = 0) -> list[LayerStability]:
    """Read stable neurons off bounds: inactive where hi <= 0, active where lo >= 0."""
    layers = []
    for k, step in enumerate(steps):
        if not isinstance(step, ReluStep):
            continue
        lo, hi = bounds.lo[k][box_index], bounds.hi[k][box_index]
        inactive = np.flatnonzero(hi <= 0)
        active = np.flatnonzero((lo >= 0) & (hi > 0))
        layers.append(LayerStability(step.layer.name, k, step.n, active, inactive))
    return layers


def stability_report(net: Network, box: Box, method: str = "crown") -> list[LayerStability]:
    steps = steps_of(net)
    return stability(steps, ANALYSES[method](steps, box.lo, box.hi))


def stable_fraction(layers: Sequence[LayerStability]) -> float:
    total = sum(s.total for s in layers)
    return sum(len(s.active) + len(s.inactive) for s in layers) / max(total, 1)
