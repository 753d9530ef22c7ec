"""Branch and bound by input splitting, for networks with few inputs (ACAS Xu has 5).

Every open box is cut in two along the input chosen by a trial split
(``trial_split``: both halves along a few candidate inputs are bounded, the
one whose worse half is closest to proved wins); CROWN, a mixed row
(``row_mix``), then optimized slopes bound the unsafe polytope on each half,
and a half where some row's lower bound exceeds its threshold cannot reach
the unsafe set and is closed.  After ``DEEPEN_AFTER`` bounded boxes (a search
that has not ended by then is a hard one), small open halves also get
intermediate bounds tightened by optimized slopes (``layer_alpha``).  The
open halves have their center and their most suspicious corner tried as
counterexamples, then a few gradient steps from that corner
(``box_attack``).  Last in, first out keeps the queue small and reaches
small boxes fast, where the probes find thin violations.

``refuted``, ``split`` and ``bisect`` are the one-shot bounding and the
cheaper branching rule (most influential input by CROWN's coefficients)
that other analyses use.
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
from relugate.passes.analysis.box_attack import descend_in_boxes
from relugate.passes.analysis.crown import crown_bounds, spec_lower_bounds
from relugate.passes.analysis.leaf_split import close_leaves, prober
from relugate.passes.analysis.steps import Step
from relugate.passes.analysis.trial_split import (  # bisect lives beside halves()
    bisect,
    candidate_dims,
    depth,
    score_boxes,
    trial_split,
)

Confirm = Callable[[np.ndarray], bool]

TRIALS = 3
"""Inputs tried per split (the most influential by CROWN's coefficients first)."""
DEEPEN_AFTER = 4096
"""Bounded boxes before small boxes get tightened intermediate bounds: every ACAS Xu
instance decided without them needs fewer (at most 3,601), and on those the extra
cost per box (several times CROWN's) is rarely repaid."""
DEEPEN_FROM = 10.0
"""Halvings of the root box from which open boxes get them (``trial_split.depth``):
larger boxes have too many unstable ReLUs for the tightening to close them."""


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


def input_split(
    net: Network,
    steps: Sequence[Step],
    box: Box,
    poly: Polytope,
    confirm: Confirm,
    deadline: float,
    batch: int = 32,
    trials: int = TRIALS,
) -> SearchResult:
    """Decide whether some input in ``box`` reaches ``poly``, until ``deadline``.

    ``batch`` open boxes are split per round, each after ``trials`` trial splits
    (``2 trials`` bounded halves); ``boxes`` in the result counts the bounded boxes."""
    started = time.monotonic()
    if started > deadline:
        return SearchResult("unknown", None, 0, 0.0)
    root = score_boxes(steps, box.lo[None], box.hi[None], poly)
    if root.proved[0]:
        return SearchResult("holds", None, 1, time.monotonic() - started)
    lo_q, hi_q, co_q, sl_q = box.lo[None].copy(), box.hi[None].copy(), root.coeffs, root.slack
    scale = np.where(box.width > 0, box.width, 1.0)
    witness = _probe(net, lo_q, hi_q, co_q, poly, confirm)
    processed = 1
    per_box = 0.0  # seconds per split box in the last round: the round shrinks near the deadline
    while witness is None and len(lo_q):
        now = time.monotonic()
        if now > deadline:
            return SearchResult("unknown", None, processed, now - started)
        size = batch if per_box == 0 else int(np.clip((deadline - now) / per_box, 1, batch))
        rest = len(lo_q) - min(size, len(lo_q))
        lo, hi, co, sl = lo_q[rest:], hi_q[rest:], co_q[rest:], sl_q[rest:]
        lo_q, hi_q, co_q, sl_q = lo_q[:rest], hi_q[:rest], co_q[:rest], sl_q[:rest]
        dims = candidate_dims(lo, hi, co, trials)
        deepen = DEEPEN_FROM if processed >= DEEPEN_AFTER else np.inf
        lo, hi, scores = trial_split(steps, lo, hi, poly, dims, sl, scale, deepen_from=deepen)
        processed += len(lo) * trials
        per_box = (time.monotonic() - now) * 2 / len(lo)
        still = ~scores.proved
        lo, hi, co, sl = lo[still], hi[still], scores.coeffs[still], scores.slack[still]
        if len(lo):
            witness = _probe(net, lo, hi, co, poly, confirm)
            if witness is None and np.isfinite(deepen):
                keep, witness = _leaves(net, steps, lo, hi, poly, confirm, scale, deadline)
                lo, hi, co, sl = lo[keep], hi[keep], co[keep], sl[keep]
            lo_q, hi_q = np.concatenate([lo_q, lo]), np.concatenate([hi_q, hi])
            co_q, sl_q = np.concatenate([co_q, co]), np.concatenate([sl_q, sl])
    status = "holds" if witness is None else "violated"
    return SearchResult(status, witness, processed, time.monotonic() - started)


def _leaves(
    net: Network,
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    poly: Polytope,
    confirm: Confirm,
    scale: np.ndarray,
    deadline: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """ReLU splitting (``leaf_split``) on the open boxes ``DEEPEN_FROM`` halvings deep or
    more: which boxes stay open, and a counterexample if one was found."""
    keep = np.ones(len(lo), dtype=bool)
    deep = np.flatnonzero(depth(lo, hi, scale) >= DEEPEN_FROM)
    if not deep.size:
        return keep, None
    probe = prober(net, poly, confirm)
    result = close_leaves(steps, lo[deep], hi[deep], poly, probe, deadline)
    keep[deep[result.closed]] = False
    return keep, result.witness


def _probe(
    net: Network,
    lo: np.ndarray,
    hi: np.ndarray,
    coeffs: np.ndarray,
    poly: Polytope,
    confirm: Confirm,
) -> np.ndarray | None:
    """Try every open box's center and the corner that minimizes its best row's linear
    lower bound (where the relaxation says that row is most likely violated), then
    a few gradient steps from that corner inside the box."""
    corner = np.where(coeffs > 0, lo, hi)
    x = np.concatenate([(lo + hi) / 2, corner])
    y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1)
    hits = x[unsafe_margin(y.astype(np.float64), poly) <= 0]
    if not len(hits):
        hits = descend_in_boxes(net, poly, corner, lo, hi)
    for candidate in hits:
        if confirm(candidate):
            return candidate
    return None
