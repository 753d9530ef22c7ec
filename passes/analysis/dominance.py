"""Which elements of a max-pool window can be its maximum on a domain.

Element ``i`` of a window is *dominated* when some other element ``j`` left in
the window satisfies ``x_j >= x_i`` on the whole domain: then removing ``i``
leaves the maximum unchanged.  Proof: a lower bound ``>= 0`` of ``x_j - x_i``,
first from the intervals (``lo_j - hi_i``), then, for the pairs that leaves
open, by back-substituting the row ``e_j - e_i`` with CROWN (``crown``), which
sees that neighbouring elements share inputs.  Bounds enclose float32
execution (``steps``), so ``x_j >= x_i`` holds for the float32 values, where
``max`` is exact.  Elements are removed one at a time, each by one still
present, so the maximum of what is left is the maximum of the window.

The constant zero may be an element (index ``ZERO``): it stands for a ReLU in
front of the pool, ``max_i relu(x_i) = max(0, x_1, ..., x_k)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import backsubstitute
from relugate.passes.analysis.steps import Step

ZERO = -2
"""Index of the constant zero in a window (-1 marks padding)."""
CHUNK_ELEMENTS = 1e7
"""Coefficients per back-substitution chunk (rows x widest step)."""


@dataclass(frozen=True)
class Removal:
    """Window ``window`` lost element ``element``: ``lo(x[by] - x[element]) = bound >= 0``."""

    window: int
    element: int
    by: int
    bound: float
    analysis: str


def _value_bounds(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of window elements (``ZERO``: the constant 0)."""
    safe = np.maximum(idx, 0)
    zero = idx == ZERO
    return np.where(zero, 0.0, lo[safe]), np.where(zero, 0.0, hi[safe])


def difference_lower_bounds(
    steps: Sequence[Step], bounds: Bounds, big: np.ndarray, small: np.ndarray
) -> np.ndarray:
    """CROWN lower bounds of ``x[big] - x[small]`` (``x``: the output of ``steps``; ZERO
    allowed on either side), one per pair, on the first box of ``bounds``."""
    n = bounds.lo[-1].shape[1]
    widest = max([n, *(lo.shape[1] for lo in bounds.lo)])
    chunk = max(1, int(CHUNK_ELEMENTS // widest))
    out = np.empty(len(big))
    for start in range(0, len(big), chunk):
        b, s = big[start : start + chunk], small[start : start + chunk]
        rows = np.arange(len(b))
        C = np.zeros((1, len(b), n))
        C[0, rows[b >= 0], b[b >= 0]] += 1.0
        C[0, rows[s >= 0], s[s >= 0]] -= 1.0
        lb, _ = backsubstitute(steps, len(steps), C, bounds.select(np.array([0])), lower=True)
        out[start : start + chunk] = lb[0]
    return out


def _open_pairs(wins: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """(window, big, small) of ordered pairs whose interval bound is not ``>= 0`` but whose
    two elements can both be the maximum by intervals."""
    w_lo, w_hi = _value_bounds(lo, hi, wins)
    valid = wins != -1
    floor = np.where(valid, w_lo, -np.inf).max(axis=1)
    alive = valid & (w_hi >= floor[:, None])
    o, p, q = np.nonzero(alive[:, :, None] & alive[:, None, :])
    keep = (p != q) & (w_lo[o, p] - w_hi[o, q] < 0)
    o, p, q = o[keep], p[keep], q[keep]
    return o, wins[o, p], wins[o, q]


def prune_windows(
    wins: np.ndarray, steps: Sequence[Step], bounds: Bounds, symbolic: bool
) -> tuple[list[list[int]], list[Removal]]:
    """The elements each window (rows of ``wins``: element indices, -1 padding, ``ZERO``)
    keeps, and one ``Removal`` per element removed."""
    lo, hi = bounds.lo[-1][0], bounds.hi[-1][0]
    pair_lb: dict[tuple[int, int, int], tuple[float, str]] = {}
    if symbolic:
        o, big, small = _open_pairs(wins, lo, hi)
        if len(o):
            lbs = difference_lower_bounds(steps, bounds, big, small)
            for key, v in zip(
                zip(o.tolist(), big.tolist(), small.tolist(), strict=True),
                lbs.tolist(),
                strict=True,
            ):
                pair_lb[key] = (v, "crown")
    kept: list[list[int]] = []
    removals: list[Removal] = []
    w_lo, w_hi = _value_bounds(lo, hi, wins)
    for w in range(len(wins)):
        elems = [int(e) for e in wins[w] if e != -1]
        e_lo = dict(zip(elems, w_lo[w][wins[w] != -1].tolist(), strict=True))
        e_hi = dict(zip(elems, w_hi[w][wins[w] != -1].tolist(), strict=True))
        left = list(dict.fromkeys(elems))
        for e in sorted(left, key=lambda k: e_hi[k]):  # the weakest first, so the strong remain
            found = _dominator(w, e, left, e_lo, e_hi, pair_lb)
            if found is not None:
                left.remove(e)
                removals.append(Removal(w, e, *found))
        kept.append(left)
    return kept, removals


def _dominator(
    w: int,
    e: int,
    left: list[int],
    e_lo: dict[int, float],
    e_hi: dict[int, float],
    pair_lb: dict[tuple[int, int, int], tuple[float, str]],
) -> tuple[int, float, str] | None:
    """An element still in the window provably ``>=`` element ``e``, with the bound."""
    best: tuple[int, float, str] | None = None
    for j in left:
        if j == e:
            continue
        bound, how = e_lo[j] - e_hi[e], "interval"
        if bound < 0 and (w, j, e) in pair_lb:
            bound, how = max(bound, pair_lb[(w, j, e)][0]), "crown"
        if bound >= 0 and (best is None or bound > best[1]):
            best = (j, bound, how)
    return best
