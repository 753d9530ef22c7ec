"""ReLU splitting on the small boxes that input splitting cannot close.

On ACAS Xu 3_3 and 4_2 prop 2, input splitting dives to boxes 2^-31 of the
root with a margin of 2e-3 left open: the gap is no longer the box's width
but the relaxation of the 10-20 ReLUs still unstable on it, which no
amount of input splitting removes near the ReLUs' kinks.  Such a box is
handed to ReLU splitting (``relu_bab.relu_split``, beta-CROWN bounds, sound
for every branch) on its intermediate bounds tightened by optimized slopes
(``layer_alpha``), for a short time: a few domains close it where input
splitting would bound thousands of boxes.  What ReLU splitting leaves
undecided goes back to input splitting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.attack import unsafe_margin
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.layer_alpha import tighten_layers
from relugate.passes.analysis.relu_bab import Probe, relu_split
from relugate.passes.analysis.steps import ReluStep, Step

MAX_UNSTABLE = 24
"""Boxes with more unstable ReLUs (after tightening) stay with input splitting."""
BUDGET = 1.0
"""Seconds of ReLU splitting per box."""


@dataclass
class LeafResult:
    closed: np.ndarray  # (B,) bool: proved safe by ReLU splitting
    witness: np.ndarray | None
    tried: int
    domains: int


def unstable_counts(
    steps: Sequence[Step], lo: list[np.ndarray], hi: list[np.ndarray]
) -> np.ndarray:
    """Unstable ReLUs per box, from every step input's bounds."""
    counts = np.zeros(lo[0].shape[0], dtype=int)
    for k, step in enumerate(steps):
        if isinstance(step, ReluStep):
            counts += ((lo[k] < 0) & (hi[k] > 0)).sum(axis=1)
    return counts


def prober(net: Network, poly: Polytope, confirm: Callable[[np.ndarray], bool]) -> Probe:
    """Candidates whose float32 output is unsafe, confirmed one by one."""

    def probe(x: np.ndarray) -> np.ndarray | None:
        y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1)
        for i in np.flatnonzero(unsafe_margin(y.astype(np.float64), poly) <= 0):
            if confirm(x[i]):
                return np.asarray(x[i])
        return None

    return probe


def close_leaves(
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    poly: Polytope,
    probe: Probe,
    deadline: float,
    max_unstable: int = MAX_UNSTABLE,
    budget: float = BUDGET,
) -> LeafResult:
    """ReLU splitting on each box (B, d) with at most ``max_unstable`` unstable ReLUs,
    ``budget`` seconds each, until ``deadline``; stops at a counterexample."""
    bounds = tighten_layers(steps, crown_bounds(steps, lo, hi))
    counts = unstable_counts(steps, bounds.lo, bounds.hi)
    closed = np.zeros(len(lo), dtype=bool)
    tried = domains = 0
    for i in np.flatnonzero(counts <= max_unstable):
        now = time.monotonic()
        if now >= deadline:
            break
        result = relu_split(
            steps, bounds.select(np.array([i])), poly, probe, min(deadline, now + budget)
        )
        tried, domains = tried + 1, domains + result.domains
        if result.status == "violated":
            return LeafResult(closed, result.x, tried, domains)
        closed[i] = result.status == "holds"
    return LeafResult(closed, None, tried, domains)
