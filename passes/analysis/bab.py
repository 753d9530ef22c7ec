"""Branch and bound by input splitting, for networks with few inputs (ACAS Xu has 5).

Boxes are processed in batches: CROWN bounds the unsafe polytope's rows on
each box; a box where some row's lower bound exceeds its threshold cannot
reach the unsafe set and is closed.  The others have their center tried as a
counterexample, then are bisected along the input whose width times the
bound's sensitivity is largest.  Last in, first out keeps the queue small and
reaches small boxes fast, where the probes find thin violations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.alpha import optimized_spec_bounds
from relugate.passes.analysis.attack import unsafe_margin
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds, spec_lower_bounds
from relugate.passes.analysis.steps import Step

Confirm = Callable[[np.ndarray], bool]


@dataclass
class SearchResult:
    status: str  # "holds", "violated" or "unknown"
    x: np.ndarray | None
    boxes: int
    seconds: float


def refuted(
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    poly: Polytope,
    alpha_iterations: int = 8,
    bounds: Bounds | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box: proved safe?, the best row's slack (lb - b), and that row's input coefficients.

    CROWN first; the boxes it leaves open get optimized lower slopes (alpha).
    ``bounds``: CROWN bounds already computed on these boxes (reused, e.g. for
    several polytopes of one case)."""
    bounds = crown_bounds(steps, lo, hi) if bounds is None else bounds
    lb, coeffs = spec_lower_bounds(steps, bounds, poly.A)
    slack = lb - poly.b
    proved = (slack > 0).any(axis=1)
    if alpha_iterations and not proved.all():
        better, _ = optimized_spec_bounds(
            steps, bounds.select(~proved), poly.A, iterations=alpha_iterations
        )
        proved[~proved] = ((better - poly.b) > 0).any(axis=1)
    # splitting follows plain CROWN's coefficients: alpha's (tried) send the search astray
    best = slack.argmax(axis=1)
    rows = np.arange(len(lo))
    return proved, slack[rows, best], coeffs[rows, best]


def split(lo: np.ndarray, hi: np.ndarray, coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bisect every box along its most influential input."""
    return bisect(lo, hi, (np.abs(coeffs) * (hi - lo)).argmax(axis=1))


def bisect(lo: np.ndarray, hi: np.ndarray, dim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row box cut in two along side ``dim[row]``: all left halves, then all right."""
    rows = np.arange(len(lo))
    mid = (lo[rows, dim] + hi[rows, dim]) / 2
    left_hi, right_lo = hi.copy(), lo.copy()
    left_hi[rows, dim] = mid
    right_lo[rows, dim] = mid
    return np.concatenate([lo, right_lo]), np.concatenate([left_hi, hi])


def input_split(
    net: Network,
    steps: Sequence[Step],
    box: Box,
    poly: Polytope,
    confirm: Confirm,
    deadline: float,
    batch: int = 256,
) -> SearchResult:
    """Decide whether some input in ``box`` reaches ``poly``, until ``deadline``."""
    started = time.monotonic()
    lo_q, hi_q = box.lo[None].copy(), box.hi[None].copy()
    processed = 0
    per_box = 0.0  # seconds per box in the last batch: the batch shrinks near the deadline
    while len(lo_q):
        now = time.monotonic()
        if now > deadline:
            return SearchResult("unknown", None, processed, now - started)
        size = batch if per_box == 0 else int(np.clip((deadline - now) / per_box, 8, batch))
        lo, hi = lo_q[-size:], hi_q[-size:]
        lo_q, hi_q = lo_q[: len(lo_q) - len(lo)], hi_q[: len(hi_q) - len(hi)]
        processed += len(lo)
        safe, slack, coeffs = refuted(steps, lo, hi, poly)
        per_box = (time.monotonic() - now) / len(lo)
        lo, hi, slack, coeffs = lo[~safe], hi[~safe], slack[~safe], coeffs[~safe]
        if not len(lo):
            continue
        witness = _probe(net, lo, hi, coeffs, poly, confirm)
        if witness is not None:
            return SearchResult("violated", witness, processed, time.monotonic() - started)
        new_lo, new_hi = split(lo, hi, coeffs)
        lo_q, hi_q = np.concatenate([lo_q, new_lo]), np.concatenate([hi_q, new_hi])
    return SearchResult("holds", None, processed, time.monotonic() - started)


def _probe(
    net: Network,
    lo: np.ndarray,
    hi: np.ndarray,
    coeffs: np.ndarray,
    poly: Polytope,
    confirm: Confirm,
) -> np.ndarray | None:
    """Try every open box's center and the corner that minimizes its best row's linear
    lower bound (where the relaxation says that row is most likely violated)."""
    x = np.concatenate([(lo + hi) / 2, np.where(coeffs > 0, lo, hi)])
    y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1)
    for i in np.flatnonzero(unsafe_margin(y.astype(np.float64), poly) <= 0):
        if confirm(x[i]):
            return x[i]
    return None
