"""ReLU stability by input splitting: bound every sub-box of a partition of the
input box, and keep per neuron the union of the sub-box bounds.

A ReLU is stable on the box when it is stable with the same sign on every
sub-box, which is exactly what the union bounds say (``lo = min`` over the
sub-boxes, ``hi = max``).  The sub-boxes partition the float32-widened box and
the analysis widens each of them to float32 again, so the union bounds enclose
every float32 execution from the box: they are as sound as the analysis run on
each sub-box, and they are intersected with that analysis on the whole box.

Splitting is adaptive and cheap for low-dimensional inputs (ACAS Xu has 5):
random samples first mark the neurons seen taking both signs (no split can
make them stable); then, round after round, every sub-box on which some other
neuron is still unstable is bisected along its widest side (relative to the
box), until no such neuron is left or the sub-box budget is spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from relugate.passes.analysis.bab import bisect
from relugate.passes.analysis.bounds import Bounds, as_batch
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.lp_encoding import forward_steps
from relugate.passes.analysis.steps import Affine, ReluStep, Step, float32_box

BoxAnalysis = Callable[[Sequence[Step], np.ndarray, np.ndarray], Bounds]


@dataclass
class SplitBounds:
    """Union bounds over a partition of one box (``bounds``: one box, method ``"split"``)."""

    bounds: Bounds
    boxes: int
    """Sub-boxes in the final partition."""
    rounds: int
    seconds: float


def _relu_steps(steps: Sequence[Step]) -> list[int]:
    return [k for k, s in enumerate(steps) if isinstance(s, ReluStep)]


def seen_both_signs(
    steps: Sequence[Step], lo: np.ndarray, hi: np.ndarray, samples: int, seed: int
) -> dict[int, np.ndarray]:
    """Per ReLU step, the units whose input is seen positive and negative at the
    centers of the boxes (rows of ``lo``/``hi``) and at ``samples`` random points of
    each (float64 evaluation): no sound analysis can prove them stable."""
    lo, hi = np.atleast_2d(lo), np.atleast_2d(hi)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(lo, hi, (samples, *lo.shape)).reshape(-1, lo.shape[1])
    acts = forward_steps(steps, np.vstack([(lo + hi) / 2, xs]))
    return {k: (acts[k].max(axis=0) > 0) & (acts[k].min(axis=0) < 0) for k in _relu_steps(steps)}


def _open_unstable(
    bounds: Bounds, relus: list[int], open_units: dict[int, np.ndarray]
) -> np.ndarray:
    """Per sub-box: how many still-open units are unstable on it."""
    need = np.zeros(bounds.boxes, dtype=np.int64)
    for k in relus:
        unstable = (bounds.lo[k] < 0) & (bounds.hi[k] > 0)
        need += (unstable & open_units[k][None, :]).sum(axis=1)
    return need


def _open_units(
    union: Bounds, relus: list[int], both: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    return {k: (union.lo[k][0] < 0) & (union.hi[k][0] > 0) & ~both[k] for k in relus}


def _union(parts: Bounds, whole: Bounds) -> Bounds:
    lo = [
        np.maximum(w, p.min(axis=0, keepdims=True)) for w, p in zip(whole.lo, parts.lo, strict=True)
    ]
    hi = [
        np.minimum(w, p.max(axis=0, keepdims=True)) for w, p in zip(whole.hi, parts.hi, strict=True)
    ]
    return Bounds(lo, hi, "split")


def smear_dims(
    steps: Sequence[Step],
    parts: Bounds,
    pick: np.ndarray,
    open_units: dict[int, np.ndarray],
    scale: np.ndarray,
) -> np.ndarray:
    """Per picked sub-box, the input whose width times the gradient magnitude, summed
    over the open units unstable there, is largest (the "smear" heuristic; gradients
    from the activation pattern at the sub-box center); the relatively widest side
    (``scale``: the whole box's widths) where that gives nothing."""
    lo, hi = parts.lo[0][pick], parts.hi[0][pick]
    h = (lo + hi) / 2
    tangent = np.broadcast_to(np.eye(lo.shape[1]), (len(pick), lo.shape[1], lo.shape[1]))
    score = np.zeros(lo.shape)
    for k, step in enumerate(steps):
        if isinstance(step, ReluStep):
            unstable = (parts.lo[k][pick] < 0) & (parts.hi[k][pick] > 0) & open_units[k][None]
            score += np.einsum("bdn,bn->bd", np.abs(tangent), unstable.astype(float))
            tangent = tangent * (h > 0)[:, None, :]
            h = np.maximum(h, 0.0)
        elif isinstance(step, Affine):
            tangent = step.apply(tangent)
            h = step.apply(h) + step.bias()
        else:
            break  # max-pool: the score so far
    score *= hi - lo
    widest = (hi - lo) / scale
    return np.argmax(np.where(score.max(axis=1, keepdims=True) > 0, score, widest), axis=1)


def _concat(a: Bounds, b: Bounds) -> Bounds:
    lo = [np.vstack([x, y]) for x, y in zip(a.lo, b.lo, strict=True)]
    hi = [np.vstack([x, y]) for x, y in zip(a.hi, b.hi, strict=True)]
    return Bounds(lo, hi, a.method)


def split_bounds(
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    max_boxes: int = 256,
    samples: int = 1000,
    seed: int = 0,
    analysis: BoxAnalysis = crown_bounds,
) -> SplitBounds:
    """Union bounds of ``analysis`` over an adaptive partition of the box ``lo``/``hi``
    (one box) into at most ``max_boxes`` sub-boxes; see the module docstring."""
    t0 = time.perf_counter()
    (lo32,), (hi32,) = float32_box(*as_batch(lo, hi))
    whole = analysis(steps, lo32, hi32)
    relus = _relu_steps(steps)
    both = seen_both_signs(steps, lo32, hi32, samples, seed)
    scale = np.where(hi32 > lo32, hi32 - lo32, 1.0)
    parts, union, rounds = whole, whole, 0
    while parts.boxes < max_boxes:
        opened = _open_units(union, relus, both)
        need = _open_unstable(parts, relus, opened)
        if not need.any():
            break
        # the sub-boxes with most open units first, as many as the budget allows
        pick = np.argsort(-need, kind="stable")[: min(np.sum(need > 0), max_boxes - parts.boxes)]
        dims = smear_dims(steps, parts, pick, opened, scale)
        p_lo, p_hi = bisect(parts.lo[0][pick], parts.hi[0][pick], dims)
        keep = np.ones(parts.boxes, dtype=bool)
        keep[pick] = False
        parts = _concat(parts.select(keep), analysis(steps, p_lo, p_hi))
        seen = seen_both_signs(steps, p_lo, p_hi, 2, seed + rounds + 1)
        both = {k: both[k] | seen[k] for k in relus}
        union = _union(parts, whole)
        rounds += 1
    return SplitBounds(union, parts.boxes, rounds, time.perf_counter() - t0)
