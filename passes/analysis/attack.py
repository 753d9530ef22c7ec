"""Search for inputs that drive the output into an unsafe polytope.

Random sampling first (cheap, catches wide violations), then PGD on the
margin ``max_i (A_i y - b_i)``: the output is unsafe when every row is <= 0.
Candidates are only candidates: the verifier confirms them in onnxruntime.
"""

from __future__ import annotations

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.pgd import Objective, pgd_maximize


def unsafe_margin(y: np.ndarray, poly: Polytope) -> np.ndarray:
    """``max_i (A_i y - b_i)`` per row of ``y``: <= 0 means unsafe."""
    if poly.A.shape[0] == 0:
        return np.full(len(y), -np.inf)
    return (y @ poly.A.T - poly.b).max(axis=1)


def margin_objective(net: Network, poly: Polytope) -> Objective:
    """Objective for PGD: ``-margin`` (maximize to reach the unsafe set) and its gradient."""

    def objective(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = net.forward(x).reshape(len(x), -1)
        if poly.A.shape[0] == 0:
            return np.zeros(len(x)), np.zeros_like(x)
        rows = y @ poly.A.T - poly.b
        worst = rows.argmax(axis=1)
        seed = -poly.A[worst]
        _, grad = net.gradient(x, seed)
        return -rows.max(axis=1), grad.reshape(len(x), -1)

    return objective


def sample_unsafe(
    net: Network, box: Box, polys: list[Polytope], rng: np.random.Generator, samples: int = 2000
) -> list[np.ndarray | None]:
    """Per polytope, a sampled input (corners, center, uniform) whose float32 output is in it."""
    x = np.concatenate([box.corners_and_center(), box.sample(samples, rng)])
    y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1).astype(np.float64)
    found: list[np.ndarray | None] = []
    for poly in polys:
        hit = np.flatnonzero(unsafe_margin(y, poly) <= 0)
        found.append(x[hit[0]] if hit.size else None)
    return found


def pgd_unsafe(
    net: Network,
    box: Box,
    poly: Polytope,
    rng: np.random.Generator,
    starts: int = 10,
    steps: int = 60,
    deadline: float | None = None,
) -> np.ndarray | None:
    """An input PGD finds in ``box`` whose float32 output lies in ``poly``, or None."""
    objective = margin_objective(net, poly)
    found = pgd_maximize(objective, box, rng, starts=starts, steps=steps, deadline=deadline)
    y = net.forward(found.x[None].astype(np.float32), np.float32).reshape(1, -1)
    if unsafe_margin(y.astype(np.float64), poly)[0] <= 0:
        return found.x
    return None
