"""Branching by trial splits, for input splitting on few inputs.

Which input to bisect decides the size of the search tree.  A trial split
bounds both halves of an open box along each of its ``k`` candidate inputs
(the most influential by CROWN's coefficients times width; 2 k children, all
bounded in one batch) and keeps the candidate whose worse half is closest to
proved: the largest ``min(slack_left, slack_right)``, a proved half counting
as infinite slack.  An aspect-ratio guard keeps any input from starving.
The kept halves' bounds are returned, so nothing is bounded twice.  On ACAS
Xu (k = 3 of 5 inputs), 1_4 prop_1 closes after a few hundred bounded boxes,
where bisecting the most influential input had not after 16,000.

Rows are scored with CROWN plus, on multi-row polytopes, one mixed row
(``row_mix``); optimized slopes then try the kept halves CROWN left open,
and, on small boxes when the caller asks, intermediate bounds tightened by
optimized slopes (``layer_alpha``: what closes ACAS Xu prop 2's boxes where
the last hidden layer is dead but CROWN cannot show it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relugate.compiler.spec import Polytope
from relugate.passes.analysis.alpha import optimized_spec_bounds
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds, spec_lower_bounds
from relugate.passes.analysis.layer_alpha import ITERATIONS as LAYER_ITERATIONS
from relugate.passes.analysis.layer_alpha import tighten_layers
from relugate.passes.analysis.row_mix import mixed_slack_tolerance, mixing_weights
from relugate.passes.analysis.steps import Step

MAX_ASPECT = 4096
"""An input is not cut further while it is this many times narrower (relative to
the root box) than another: without the guard, a cut that keeps the worse half
as it is can be chosen again and again, starving the inputs that matter."""
CHUNK = 32
"""Boxes bounded together: the back-substitution's arrays stay in cache (twice as
fast per box on ACAS Xu as batches of 256)."""


@dataclass
class Scores:
    """Per box: proved safe?, the best slack of any row (lb - b, plain CROWN or
    optimized slopes), and plain CROWN's input coefficients of its best row."""

    proved: np.ndarray
    slack: np.ndarray
    coeffs: np.ndarray
    lam: np.ndarray  # (B, r): the weights of the mixed row (``row_mix``)

    def take(self, index: np.ndarray | slice) -> Scores:
        return Scores(self.proved[index], self.slack[index], self.coeffs[index], self.lam[index])


def score_boxes(
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    poly: Polytope,
    alpha_iterations: int = 8,
    layer_iterations: int = 0,
) -> Scores:
    """CROWN on every box, optimized slopes on the boxes it leaves open, then, when
    ``layer_iterations`` > 0, tightened intermediate bounds (``layer_alpha``) on
    the boxes still open."""
    parts = []
    for i in range(0, len(lo), CHUNK):
        bounds = crown_bounds(steps, lo[i : i + CHUNK], hi[i : i + CHUNK])
        scores = _crown_scores(steps, bounds, poly)
        _optimize(steps, bounds, poly, scores, ~scores.proved, alpha_iterations)
        _deepen(steps, bounds, poly, scores, ~scores.proved, layer_iterations, alpha_iterations)
        parts.append(scores)
    return _joined(parts)


def _joined(parts: list[Scores]) -> Scores:
    return Scores(
        np.concatenate([p.proved for p in parts]),
        np.concatenate([p.slack for p in parts]),
        np.concatenate([p.coeffs for p in parts]),
        np.concatenate([p.lam for p in parts]),
    )


def _crown_scores(steps: Sequence[Step], bounds: Bounds, poly: Polytope) -> Scores:
    """Every row's CROWN bound, then, on the boxes still open, a mixed row's."""
    lb, coeffs = spec_lower_bounds(steps, bounds, poly.A)
    rows = lb - poly.b
    best = rows.argmax(axis=1)
    pick = np.arange(len(rows))
    slack, coeffs_best = rows[pick, best], coeffs[pick, best]
    lam = np.zeros_like(rows)
    lam[pick, best] = 1.0
    still = slack <= 0
    if poly.A.shape[0] > 1 and still.any():
        lo, hi = bounds.lo[0][still], bounds.hi[0][still]
        lam[still], _ = mixing_weights(rows[still], coeffs[still], lo, hi)
        sub = bounds.select(still)
        mixed_lb, mixed_coeffs = spec_lower_bounds(steps, sub, (lam[still] @ poly.A)[:, None, :])
        mixed = mixed_lb[:, 0] - _mixed_b(lam[still], poly, sub)
        wins = mixed > slack[still]
        better = np.flatnonzero(still)[wins]
        slack[better] = mixed[wins]
        coeffs_best[better] = mixed_coeffs[wins, 0]
    return Scores(slack > 0, slack, coeffs_best, lam)


def _mixed_b(lam: np.ndarray, poly: Polytope, bounds: Bounds) -> np.ndarray:
    """The mixed rows' thresholds, raised by their rounding tolerance."""
    y_abs = np.maximum(np.abs(bounds.lo[-1]), np.abs(bounds.hi[-1]))
    return lam @ poly.b + mixed_slack_tolerance(lam, poly.A, poly.b, y_abs)


def _optimize(
    steps: Sequence[Step],
    bounds: Bounds,
    poly: Polytope,
    scores: Scores,
    which: np.ndarray,
    iterations: int,
) -> None:
    """Optimized slopes on the boxes ``which`` (a mask), for every row and the mixed
    one: their slack and proved flag improve in place."""
    if not iterations or not which.any():
        return
    sub = bounds.select(which)
    lam = scores.lam[which]
    C = np.concatenate(
        [np.broadcast_to(poly.A, (len(lam), *poly.A.shape)), (lam @ poly.A)[:, None, :]], axis=1
    )
    b = np.concatenate(
        [np.broadcast_to(poly.b, (len(lam), len(poly.b))), _mixed_b(lam, poly, sub)[:, None]],
        axis=1,
    )
    better, _ = optimized_spec_bounds(steps, sub, C, iterations=iterations)
    scores.slack[which] = np.maximum(scores.slack[which], (better - b).max(axis=1))
    scores.proved[which] = scores.slack[which] > 0


def _deepen(
    steps: Sequence[Step],
    bounds: Bounds,
    poly: Polytope,
    scores: Scores,
    which: np.ndarray,
    iterations: int,
    alpha_iterations: int,
) -> None:
    """On the boxes ``which`` (a mask), intermediate bounds tightened by optimized
    slopes (``layer_alpha``), then the rows, the mixed row and optimized spec
    slopes again on them: slack and proved flag improve in place."""
    if not iterations or not which.any():
        return
    tight = tighten_layers(steps, bounds.select(which), iterations)
    again = _crown_scores(steps, tight, poly)
    _optimize(steps, tight, poly, again, ~again.proved, alpha_iterations)
    scores.slack[which] = np.maximum(scores.slack[which], again.slack)
    scores.proved[which] = scores.slack[which] > 0


def candidate_dims(lo: np.ndarray, hi: np.ndarray, coeffs: np.ndarray, k: int) -> np.ndarray:
    """Per box, the ``k`` inputs with the largest ``|CROWN coefficient| x width``
    (``bab.split``'s rule), most influential first: (B, k)."""
    return np.argsort(-np.abs(coeffs) * (hi - lo), axis=1, kind="stable")[:, :k]


def bisect(lo: np.ndarray, hi: np.ndarray, dim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row box cut in two along side ``dim[row]``: all left halves, then all right."""
    rows = np.arange(len(lo))
    mid = (lo[rows, dim] + hi[rows, dim]) / 2
    left_hi, right_lo = hi.copy(), lo.copy()
    left_hi[rows, dim] = mid
    right_lo[rows, dim] = mid
    return np.concatenate([lo, right_lo]), np.concatenate([left_hi, hi])


def halves(lo: np.ndarray, hi: np.ndarray, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every box (B, d) cut along each of its candidate inputs ``dims`` (B, k): left
    halves ordered box-major then candidate (B * k rows), then the right halves."""
    k = dims.shape[1]
    return bisect(np.repeat(lo, k, axis=0), np.repeat(hi, k, axis=0), dims.reshape(-1))


def best_dimension(
    left: np.ndarray, right: np.ndarray, parent: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """Per box, the candidate whose worse half has the largest slack; ``left`` and
    ``right`` are (B, k) slacks with proved halves at +inf.  Ties go to the larger
    other half (a proved half beats an open one), then to the first candidate.
    Where no candidate's worse half improves on ``parent`` (B,), the box's own
    slack, the trial says nothing and the widest candidate (``widths`` (B, k),
    relative to the root box) is cut."""
    worst = np.minimum(left, right)
    best = worst.max(axis=1, keepdims=True)
    total = np.where(worst == best, np.maximum(left, right), -np.inf)
    stuck = best[:, 0] <= parent + 1e-9 * (1 + np.abs(parent))
    return np.asarray(np.where(stuck, widths.argmax(axis=1), total.argmax(axis=1)))


def depth(lo: np.ndarray, hi: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per box, how many halvings of the root box (``scale`` (d,): its widths) it is
    (inputs of width zero count none)."""
    rel = np.where(hi > lo, (hi - lo) / scale, 1.0)
    return np.asarray(-np.log2(rel).sum(axis=1))


def starved(lo: np.ndarray, hi: np.ndarray, dim: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Boxes where ``dim`` is already ``MAX_ASPECT`` times narrower (relative to
    the root box widths ``scale``) than their widest input."""
    rel = (hi - lo) / scale
    return np.asarray(rel[np.arange(len(lo)), dim] * MAX_ASPECT < rel.max(axis=1))


def trial_split(
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    poly: Polytope,
    dims: np.ndarray,
    parent: np.ndarray,
    scale: np.ndarray,
    alpha_iterations: int = 8,
    deepen_from: float = np.inf,
) -> tuple[np.ndarray, np.ndarray, Scores]:
    """The two children of every box along its best candidate input (``dims``, (B, k)),
    with their scores: all left children first, then all right ones (as
    ``bab.bisect``).  The choice follows plain CROWN; optimized slopes then try the
    kept children it left open.  ``parent``: the boxes' own slacks, ``scale`` (d,)
    the root box's widths (see ``best_dimension``); where the choice would make a
    box too thin (``starved``), its widest input is cut instead.  Kept children
    at least ``deepen_from`` halvings deep (``depth``) that are still open get
    tightened intermediate bounds (``layer_alpha``) and are scored again."""
    B, k = dims.shape
    child_lo, child_hi = halves(lo, hi, dims)
    bounds = [
        crown_bounds(steps, child_lo[i : i + CHUNK], child_hi[i : i + CHUNK])
        for i in range(0, len(child_lo), CHUNK)
    ]
    scores = _joined([_crown_scores(steps, b, poly) for b in bounds])
    slack = np.where(scores.proved, np.inf, scores.slack)
    widths = np.take_along_axis((hi - lo) / scale, dims, axis=1)
    left, right = slack[: B * k].reshape(B, k), slack[B * k :].reshape(B, k)
    choice = best_dimension(left, right, parent, widths)
    stuck = starved(lo, hi, dims[np.arange(B), choice], scale)
    pick = np.arange(B) * k + choice
    keep = np.concatenate([pick, B * k + pick])
    kept = np.zeros(len(child_lo), dtype=bool)
    kept[keep[np.tile(~stuck, 2)]] = True
    deep = depth(child_lo, child_hi, scale) >= deepen_from
    for i, b in enumerate(bounds):
        part = slice(i * CHUNK, i * CHUNK + b.boxes)
        chunk = scores.take(part)  # views: optimized in place
        _optimize(steps, b, poly, chunk, kept[part] & ~chunk.proved, alpha_iterations)
        which = kept[part] & ~chunk.proved & deep[part]
        _deepen(steps, b, poly, chunk, which, LAYER_ITERATIONS, alpha_iterations)
    out_lo, out_hi, out = child_lo[keep], child_hi[keep], scores.take(keep)
    if stuck.any():
        widest = ((hi[stuck] - lo[stuck]) / scale).argmax(axis=1)
        w_lo, w_hi = halves(lo[stuck], hi[stuck], widest[:, None])
        deepen = LAYER_ITERATIONS if depth(w_lo, w_hi, scale).max() >= deepen_from else 0
        w_scores = score_boxes(steps, w_lo, w_hi, poly, alpha_iterations, deepen)
        rows = np.tile(stuck, 2)
        out_lo[rows], out_hi[rows] = w_lo, w_hi
        for name in ("proved", "slack", "coeffs", "lam"):
            getattr(out, name)[rows] = getattr(w_scores, name)
    return out_lo, out_hi, out
