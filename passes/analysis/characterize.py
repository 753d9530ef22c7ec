"""Input characterization: a property's input box split into boxes proved safe,
boxes holding a validated counterexample, and undecided boxes, within a time budget.

The leaves of the partition are kept as arrays.  Each round takes the largest
open boxes (largest relative volume first: proved volume grows fastest that
way) and bounds them:

* ``crown``: CROWN with optimized lower slopes on the unsafe polytopes' rows
  (``bab.refuted``).  A box where every polytope is refuted is safe; its
  activation pattern (each ReLU's sign where the bounds fix it) is the
  structure the proof used.  On the others, CROWN upper bounds may prove that
  every input is unsafe; the center and the corner minimizing the bound are
  run in float32 and, when unsafe, confirmed in onnxruntime on the original
  file.  Boxes not closed are bisected along the input whose width times the
  bound's sensitivity is largest (``bab.split``); a counterexample stays with
  the child holding it, and boxes with one keep being split to carve out
  their safe parts.
* ``crown-widest``: the same, but bisecting the widest (relative) input
  (an ablation of the bound-guided choice).
* ``interval``: the plain baseline: interval bounds, widest (relative)
  input first, no counterexample search.

Bounds enclose float32 execution (see ``steps``), so "safe" holds for every
float32 input of the box as the deployed network computes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from relugate.compiler.network import Network
from relugate.compiler.spec import Case, Polytope, Property
from relugate.passes.analysis.attack import unsafe_margin
from relugate.passes.analysis.bab import bisect, refuted
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds, spec_lower_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.steps import U64, ReluStep, Step

OPEN, SAFE, UNSAFE = 0, 1, 2
STATUS = {OPEN: "undecided", SAFE: "safe", UNSAFE: "unsafe"}
METHODS = ("crown", "crown-widest", "interval")

Validate = Callable[[np.ndarray], np.ndarray]
"""Float32 inputs (k, n) -> outputs (k, m) of the original model in onnxruntime."""


@dataclass
class Leaves:
    """The boxes of the partition, one row each."""

    case: np.ndarray  # (N,) index of the property's case
    lo: np.ndarray  # (N, n)
    hi: np.ndarray  # (N, n)
    status: np.ndarray  # (N,) OPEN, SAFE or UNSAFE
    proved_unsafe: np.ndarray  # (N,) bounds show every input of the box is unsafe
    pattern: np.ndarray  # (N, R) int8: +1 active, -1 inactive, 0 unstable (on safe boxes)
    witness: np.ndarray  # (N, n) float32 counterexample, NaN where none
    output: np.ndarray  # (N, m) its output in onnxruntime
    stuck: np.ndarray  # (N,) too thin to bisect (float64 has no midpoint): left as it is

    @property
    def count(self) -> int:
        return int(self.case.size)

    def take(self, index: np.ndarray) -> Leaves:
        return Leaves(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence[Leaves]) -> Leaves:
        return Leaves(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Leaves))
        )

    def open_mask(self) -> np.ndarray:
        """Boxes worth splitting further: undecided, or unsafe somewhere but not everywhere."""
        splittable = (self.status == OPEN) | ((self.status == UNSAFE) & ~self.proved_unsafe)
        return splittable & ~self.stuck


def relu_layers(steps: Sequence[Step]) -> list[tuple[int, int]]:
    """(step index, neurons) of every ReLU step: the columns of ``Leaves.pattern``."""
    return [(j, s.n) for j, s in enumerate(steps) if isinstance(s, ReluStep)]


def signs_of(steps: Sequence[Step], bounds: Bounds) -> np.ndarray:
    """(B, R) per box: +1 where a ReLU's input is >= 0 on the box, -1 where <= 0, else 0."""
    cols = [
        np.where(bounds.hi[j] <= 0, -1, np.where(bounds.lo[j] >= 0, 1, 0))
        for j, _ in relu_layers(steps)
    ]
    if not cols:
        return np.zeros((bounds.boxes, 0), np.int8)
    return np.concatenate(cols, axis=1).astype(np.int8)


@dataclass
class Characterization:
    """The partition of every case's box, and how it was obtained."""

    prop: Property
    leaves: Leaves
    layers: list[tuple[int, int]]
    method: str = "crown"
    seconds: float = 0.0
    processed: int = 0
    scale: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.scale = np.stack([c.box.width for c in self.prop.cases])

    def volumes(self) -> np.ndarray:
        """Each leaf's volume relative to its case's box (dimensions of width 0 ignored)."""
        scale = self.scale[self.leaves.case]
        rel = np.where(
            scale > 0, (self.leaves.hi - self.leaves.lo) / np.where(scale > 0, scale, 1), 1
        )
        return np.prod(rel, axis=1)

    def fractions(self, case: int | None = None) -> dict[str, float]:
        """Volume fraction safe / unsafe (boxes with a counterexample) / undecided, over
        one case's box or averaged over the cases."""
        vol = self.volumes()
        keep = np.ones(vol.size, bool) if case is None else self.leaves.case == case
        cases = 1 if case is not None else len(self.prop.cases)
        out = {
            name: float(vol[keep & (self.leaves.status == code)].sum() / cases)
            for code, name in STATUS.items()
        }
        out["proved_unsafe"] = float(vol[keep & self.leaves.proved_unsafe].sum() / cases)
        return out

    @property
    def complete(self) -> bool:
        return not self.leaves.open_mask().any()


def start(prop: Property, steps: Sequence[Step], method: str = "crown") -> Characterization:
    """One open leaf per case: its whole box."""
    layers = relu_layers(steps)
    k, n, m = len(prop.cases), prop.n_inputs, prop.n_outputs
    leaves = Leaves(
        np.arange(k),
        np.stack([c.box.lo for c in prop.cases]),
        np.stack([c.box.hi for c in prop.cases]),
        np.zeros(k, np.int8),
        np.zeros(k, bool),
        np.zeros((k, sum(size for _, size in layers)), np.int8),
        np.full((k, n), np.nan, np.float32),
        np.full((k, m), np.nan),
        np.zeros(k, bool),
    )
    return Characterization(prop, leaves, layers, method)


def characterize(
    net: Network,
    steps: Sequence[Step],
    state: Characterization,
    validate: Validate,
    deadline: float,
    batch: int = 256,
    on_round: Callable[[Characterization], None] | None = None,
) -> Characterization:
    """Refine ``state`` until ``deadline`` or until no box is open; ``on_round`` is
    called after every round (progress display, periodic checkpoints)."""
    started = time.monotonic()
    per_box = 0.0
    try:
        while True:
            now = time.monotonic()
            opened = np.flatnonzero(state.leaves.open_mask())
            if now >= deadline or not opened.size:
                break
            size = batch if per_box == 0 else int(np.clip((deadline - now) / per_box, 8, batch))
            vol = state.volumes()[opened]
            pick = opened[np.argsort(-vol, kind="stable")[:size]]
            rest = np.ones(state.leaves.count, bool)
            rest[pick] = False
            done = _round(net, steps, state, state.leaves.take(pick), validate)
            state.leaves = Leaves.concat([state.leaves.take(rest), done])
            state.processed += pick.size
            per_box = (time.monotonic() - now) / pick.size
            if on_round is not None:
                on_round(state)
    finally:
        state.seconds += time.monotonic() - started
    return state


def _round(
    net: Network, steps: Sequence[Step], state: Characterization, work: Leaves, validate: Validate
) -> Leaves:
    parts = []
    for c in np.unique(work.case):
        sub = work.take(np.flatnonzero(work.case == c))
        case = state.prop.cases[int(c)]
        if state.method == "interval":
            parts.append(_interval_round(steps, case, sub, state.scale[int(c)]))
        else:
            guided = state.method == "crown"
            parts.append(_crown_round(net, steps, case, sub, validate, state.scale[int(c)], guided))
    return Leaves.concat(parts)


def _crown_round(
    net: Network,
    steps: Sequence[Step],
    case: Case,
    work: Leaves,
    validate: Validate,
    scale: np.ndarray,
    guided: bool = True,
) -> Leaves:
    bounds = crown_bounds(steps, work.lo, work.hi)
    safe = np.ones(work.count, bool)
    worst = np.full(work.count, np.inf)
    coeffs = np.zeros(work.lo.shape)
    for poly in case.unsafe:
        proved, slack, co = refuted(steps, work.lo, work.hi, poly, bounds=bounds)
        safe &= proved
        hardest = ~proved & (slack < worst)
        worst = np.where(hardest, slack, worst)
        coeffs[hardest] = co[hardest]
    work.status[safe] = SAFE
    work.pattern[safe] = signs_of(steps, bounds.select(safe))
    todo = np.flatnonzero(~safe)
    if todo.size:
        sub = bounds.select(todo)
        everywhere = np.zeros(todo.size, bool)
        for poly in case.unsafe:
            everywhere |= _all_unsafe(steps, sub, poly)
        _probe(net, case, work, todo, coeffs[todo], everywhere, validate)
        work.proved_unsafe[todo] = everywhere & (work.status[todo] == UNSAFE)
    score = np.abs(coeffs) * (work.hi - work.lo) if guided else np.zeros(work.lo.shape)
    return _split_open(work, score, scale)


def _all_unsafe(steps: Sequence[Step], bounds: Bounds, poly: Polytope) -> np.ndarray:
    """Per box: do CROWN upper bounds put every output of the box in ``poly``?"""
    if poly.A.shape[0] == 0:
        return np.ones(bounds.boxes, bool)
    neg_lower, _ = spec_lower_bounds(steps, bounds, -poly.A)
    return np.all(-neg_lower <= poly.b, axis=1)


def _probe(
    net: Network,
    case: Case,
    work: Leaves,
    todo: np.ndarray,
    coeffs: np.ndarray,
    everywhere: np.ndarray,
    validate: Validate,
) -> None:
    """Give the open boxes without a counterexample one if their center or the corner
    minimizing the bound is unsafe in float32 and onnxruntime confirms it."""
    need = np.flatnonzero(np.isnan(work.witness[todo, 0]))
    if not need.size:
        return
    rows = todo[need]
    lo, hi = work.lo[rows], work.hi[rows]
    cand = np.concatenate([(lo + hi) / 2, np.where(coeffs[need] > 0, lo, hi)])
    owner = np.concatenate([rows, rows])
    x32 = inside32(cand, work.lo[owner], work.hi[owner])
    y = net.forward(x32, np.float32).reshape(len(x32), -1).astype(np.float64)
    hit = np.zeros(len(x32), bool)
    for poly in case.unsafe:
        hit |= unsafe_margin(y, poly) <= 0
    hit[: rows.size] |= everywhere[need]  # the center of a box proved unsafe everywhere
    hit &= np.all((x32 >= work.lo[owner]) & (x32 <= work.hi[owner]), axis=1)
    idx = np.flatnonzero(hit)
    if not idx.size:
        return
    y_ort = validate(x32[idx])
    for i, out in zip(idx, y_ort, strict=True):
        r = owner[i]
        if np.isnan(work.witness[r, 0]) and case.is_unsafe(out)[0]:
            work.witness[r], work.output[r], work.status[r] = x32[i], out, UNSAFE


def inside32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as float32 values inside their boxes where one exists (rounding to
    float32 can step outside; a box too thin to hold a float32 value keeps a row outside)."""
    x32 = np.clip(x, lo, hi).astype(np.float32)
    low = x32.astype(np.float64) < lo
    x32[low] = np.nextafter(x32[low], np.float32(np.inf))
    high = x32.astype(np.float64) > hi
    x32[high] = np.nextafter(x32[high], np.float32(-np.inf))
    return x32


def _interval_round(steps: Sequence[Step], case: Case, work: Leaves, scale: np.ndarray) -> Leaves:
    bounds = interval_bounds(steps, work.lo, work.hi)
    y_lo, y_hi = bounds.output()
    safe = np.ones(work.count, bool)
    for poly in case.unsafe:
        pos, neg = np.maximum(poly.A, 0), np.minimum(poly.A, 0)
        lower = y_lo @ pos.T + y_hi @ neg.T
        mag = np.maximum(np.abs(y_lo), np.abs(y_hi)) @ np.abs(poly.A).T
        lower -= 4 * (poly.A.shape[1] + 2) * U64 * mag
        safe &= (lower > poly.b).any(axis=1)
    work.status[safe] = SAFE
    work.pattern[safe] = signs_of(steps, bounds.select(safe))
    return _split_open(work, np.zeros(work.lo.shape), scale)


def _split_open(work: Leaves, score: np.ndarray, scale: np.ndarray) -> Leaves:
    """Closed boxes as they are; the others bisected along their highest-scoring input
    (the widest relative input where the score gives no preference)."""
    closed = (work.status == SAFE) | work.proved_unsafe
    rel = np.where(scale > 0, (work.hi - work.lo) / np.where(scale > 0, scale, 1), 0)
    dim = np.where(score.max(axis=1) > 0, score.argmax(axis=1), rel.argmax(axis=1))
    rows = np.arange(work.count)
    mid = (work.lo[rows, dim] + work.hi[rows, dim]) / 2
    work.stuck |= ~closed & ~((work.lo[rows, dim] < mid) & (mid < work.hi[rows, dim]))
    closed |= work.stuck
    split = work.take(np.flatnonzero(~closed))
    if not split.count:
        return work
    dim = dim[~closed]
    lo, hi = bisect(split.lo, split.hi, dim)
    left, right = split.take(np.arange(split.count)), split.take(np.arange(split.count))
    left.lo, left.hi = lo[: split.count], hi[: split.count]
    right.lo, right.hi = lo[split.count :], hi[split.count :]
    # a counterexample goes to the child that holds it; the other child is open again
    rows = np.arange(split.count)
    has = ~np.isnan(split.witness[:, 0])
    in_left = has & (split.witness[rows, dim].astype(np.float64) <= left.hi[rows, dim])
    _forget(left, ~in_left)
    _forget(right, ~(has & ~in_left))
    return Leaves.concat([work.take(np.flatnonzero(closed)), left, right])


def _forget(leaves: Leaves, rows: np.ndarray) -> None:
    leaves.status[rows] = OPEN
    leaves.witness[rows] = np.nan
    leaves.output[rows] = np.nan
