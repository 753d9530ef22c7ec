"""Projected gradient ascent over an input box: the adversarial half of
"soundness is tested by trying to break it".

Nothing here proves anything; it searches for inputs that break a claim
(two networks differ, an output leaves a set) so tests, ``--verify-each`` and
later the verifier can find counterexamples cheaply before reaching for
exact methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.network import Network

Objective = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Maps a batch of flat inputs ``(n, d)`` to values ``(n,)`` and gradients ``(n, d)``."""


@dataclass(frozen=True)
class Ascent:
    x: np.ndarray  # the best input found, flat
    value: float


def pgd_maximize(
    objective: Objective,
    box: Box,
    rng: np.random.Generator,
    starts: int = 20,
    steps: int = 100,
    step_fraction: float = 0.05,
    deadline: float | None = None,
) -> Ascent:
    """Sign-gradient ascent from ``starts`` random points (plus the center), projected
    onto ``box``; the step shrinks linearly from ``step_fraction`` of the box width.
    Stops early at ``deadline`` (a ``time.monotonic()`` value)."""
    x = np.concatenate([box.center[None], box.sample(starts, rng)])
    best_x, best_v = x.copy(), objective(x)[0]
    for t in range(steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        value, grad = objective(x)
        better = value > best_v
        best_x[better], best_v[better] = x[better], value[better]
        step = step_fraction * (1 - t / steps) * box.width
        x = np.clip(x + step * np.sign(grad), box.lo, box.hi)
    value, _ = objective(x)
    better = value > best_v
    best_x[better], best_v[better] = x[better], value[better]
    k = int(np.argmax(best_v))
    return Ascent(best_x[k], float(best_v[k]))


def difference_objective(a: Network, b: Network) -> Objective:
    """``sum_k |a(x)_k - b(x)_k|`` and its gradient, in float64."""

    def objective(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ya = a.forward(x).reshape(len(x), -1)
        yb = b.forward(x).reshape(len(x), -1)
        seed = np.sign(ya - yb)
        grad = a.gradient(x, seed)[1] - b.gradient(x, seed)[1]
        return np.abs(ya - yb).sum(axis=1), grad.reshape(len(x), -1)

    return objective


def max_difference(
    a: Network, b: Network, box: Box, rng: np.random.Generator, starts: int = 10, steps: int = 50
) -> Ascent:
    """Where PGD finds the two networks furthest apart on ``box`` (L1 over outputs),
    with the largest single-output difference there as ``value``."""
    found = pgd_maximize(difference_objective(a, b), box, rng, starts, steps)
    worst = np.abs(a.forward(found.x[None]) - b.forward(found.x[None])).max()
    return Ascent(found.x, float(worst))
