"""Per-coordinate tightening of a hidden gate's region, guided by the tail's bounds.

Start from the hull ``Q`` of the original-safe samples' hidden values.  While CROWN on
the tail (the network after the cut) over the region does not keep the output out of
every unsafe polytope, take the first polytope it does not escape and its row with
the best lower bound ``min_H (a_r y) - b_r = -need``; CROWN's input coefficients
``alpha`` of that bound say how much moving each side of the region buys: raising
``lo_i`` (``alpha_i > 0``) or lowering ``hi_i`` (``alpha_i < 0``) by ``t`` raises the
bound by about ``|alpha_i| t``.  Candidate moves put a side on one of the next
order statistics of the samples still inside (giving up 1, 2, 4, ... of them); the
move with the most bound gained (capped at ``need``) per sample given up is made, and
CROWN runs again.  The row escaped by matters (ACAS Xu prop 2: "some advisory
scores above clear-of-conflict" has four witnesses), so each of the first
polytope's rows is tried as the witness, besides the best-bound choice, and the
region keeping most samples wins.  The result is a region CROWN proves, or None;
``verify_model`` proves it again in the end (``hidden_proof``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relugate.compiler.spec import Polytope
from relugate.passes.analysis.crown import crown_bounds, spec_lower_bounds
from relugate.passes.analysis.hidden_proof import Range
from relugate.passes.analysis.steps import Step

MAX_MOVES = 400
"""Moves before giving up."""
WITNESS_ROWS = 8
"""Rows of the first polytope tried, each as the one the region escapes by."""
MARGIN = 1e-6
"""Relative margin the bound must clear (the final proof adds float32 margins)."""


def _deficit(
    steps: Sequence[Step], polys: Sequence[Polytope], region: Range, first_row: int | None
) -> tuple[float, np.ndarray] | None:
    """``need`` and ``alpha`` for the first polytope CROWN does not escape (by its row
    ``first_row`` for the first polytope when given); None: all are escaped."""
    lo, hi = region
    bounds = crown_bounds(steps, lo[None], hi[None])
    for j, poly in enumerate(polys):
        lb, coeffs = spec_lower_bounds(steps, bounds, poly.A)
        value = lb[0] - poly.b
        slack = MARGIN * np.maximum(1.0, np.abs(poly.b))
        if np.any(value > slack):
            continue
        r = int(np.argmax(value)) if j or first_row is None else first_row
        return -float(value[r]) + 2 * float(slack[r]), coeffs[0, r]
    return None


def _best_move(
    h: np.ndarray, inside: np.ndarray, region: Range, need: float, alpha: np.ndarray
) -> tuple[int, int, float] | None:
    """``(coordinate, side, new bound)``: side 0 raises ``lo``, 1 lowers ``hi``."""
    lo, hi = region
    rows = h[inside]
    best: tuple[float, int, int, float] | None = None
    for i in np.flatnonzero(alpha != 0):
        side = 0 if alpha[i] > 0 else 1
        values = np.sort(rows[:, i]) if side == 0 else -np.sort(-rows[:, i])
        m = 1
        while m < len(values):
            bound = values[m]
            gain = abs(alpha[i]) * abs(bound - (lo[i] if side == 0 else hi[i]))
            lost = int(np.count_nonzero(rows[:, i] < bound if side == 0 else rows[:, i] > bound))
            if lost and gain > 0:
                score = min(gain, need) / lost
                if best is None or score > best[0]:
                    best = (score, int(i), side, float(bound))
            if gain >= need:
                break
            m *= 2
    return None if best is None else best[1:]


def tighten(
    steps: Sequence[Step], polys: Sequence[Polytope], h: np.ndarray, region: Range
) -> Range | None:
    """The best region (most samples ``h`` inside) of ``tighten_with`` over the first
    polytope's rows as the one to escape by (up to ``WITNESS_ROWS`` of them)."""
    rows = min(len(polys[0].b), WITNESS_ROWS) if polys else 0
    found = [tighten_with(steps, polys, h, region, r) for r in range(rows)]
    found += [tighten_with(steps, polys, h, region, None)]
    best, kept = None, -1
    for r in found:
        if r is not None and (n := int(np.all((h >= r[0]) & (h <= r[1]), axis=1).sum())) > kept:
            best, kept = r, n
    return best


def tighten_with(
    steps: Sequence[Step],
    polys: Sequence[Polytope],
    h: np.ndarray,
    region: Range,
    first_row: int | None,
) -> Range | None:
    """The region shrunk until CROWN proves it (see the module doc), or None."""
    lo, hi = region[0].copy(), region[1].copy()
    inside = np.all((h >= lo) & (h <= hi), axis=1)
    for _ in range(MAX_MOVES):
        deficit = _deficit(steps, polys, (lo, hi), first_row)
        if deficit is None:
            return lo, hi
        move = _best_move(h, inside, (lo, hi), *deficit)
        if move is None:
            return None
        i, side, bound = move
        if side == 0:
            lo[i] = bound
        else:
            hi[i] = bound
        inside &= (h[:, i] >= lo[i]) & (h[:, i] <= hi[i])
        if not inside.any():
            return None
    return None
