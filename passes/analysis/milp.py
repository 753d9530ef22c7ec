"""LP bound tightening, exact (MILP) neuron bounds and stability, and MILP search for
counterexamples, all on one input box, with HiGHS through ``scipy.optimize``.

The encoding (``lp_encoding``) contains every float32 execution from the box:
affine steps carry their float32 rounding margin as a bounded slack, and every
variable is bounded by sound ``Bounds``.

Soundness.  ``lp_tighten`` never trusts HiGHS's objective value (it is only
optimal up to feasibility tolerances): it takes the dual multipliers HiGHS
reports and evaluates the weak-duality bound of Neumaier & Shcherbina, valid
for ANY multipliers of the right sign, minus a float64 rounding allowance
(``lp_encoding.safe_lower_bound``).  So the tightened bounds hold for float32
execution whatever the solver did, and they are intersected with the input
bounds, so they are never looser.  The MILP results (exact bounds, stability
labels, ``milp_find``'s "infeasible") are decided by HiGHS up to its
tolerances (about 1e-6): ground truth for benchmarks and a strong search, not
a proof; ``milp_find`` enlarges the unsafe set by ``1e-6 (1 + |b|)`` so a
tolerance cannot hide a counterexample by that much, and its feasible points
are candidates to re-check in float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse

from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.interval import step_interval
from relugate.passes.analysis.lp_encoding import (
    Encoding,
    encode,
    forward_steps,
    lp_lower_bound,
    solve_milp,
    unit,
    with_rows,
)
from relugate.passes.analysis.steps import MaxPoolStep, ReluStep, Step

UNSAFE_SLACK = 1e-6
"""Relative enlargement of the unsafe set in ``milp_find`` (covers HiGHS tolerances)."""


# --- helpers -----------------------------------------------------------------


def _one_box(bounds: Bounds, box_index: int, method: str) -> Bounds:
    pick = slice(box_index, box_index + 1)
    return Bounds([a[pick].copy() for a in bounds.lo], [a[pick].copy() for a in bounds.hi], method)


def relu_stability(steps: Sequence[Step], bounds: Bounds, box_index: int = 0) -> dict[str, int]:
    """Counts of ReLU units proven active / inactive by ``bounds`` (and their total)."""
    active = inactive = total = 0
    for k, step in enumerate(steps):
        if isinstance(step, ReluStep):
            lo, hi = bounds.lo[k][box_index], bounds.hi[k][box_index]
            inactive += int(np.sum(hi <= 0))
            active += int(np.sum((lo >= 0) & (hi > 0)))
            total += step.n
    return {"active": active, "inactive": inactive, "stable": active + inactive, "total": total}


def _propagate(steps: Sequence[Step], bounds: Bounds, start: int) -> None:
    """Intersect every bound after step input ``start`` with intervals of the ones before."""
    for j in range(start, len(steps)):
        lo, hi = step_interval(steps[j], bounds.lo[j], bounds.hi[j])
        bounds.lo[j + 1] = np.maximum(bounds.lo[j + 1], lo)
        bounds.hi[j + 1] = np.minimum(bounds.hi[j + 1], hi)


# --- LP bound tightening -------------------------------------------------------


@dataclass
class LpTightening:
    """What ``lp_tighten_report`` did: the bounds (one box) and how it got there."""

    bounds: Bounds
    stable_before: int
    stable_after: int
    lps: int
    seconds: float
    complete: bool
    """False when the time limit stopped it early (the bounds are still sound)."""


def _targets(steps: Sequence[Step]) -> list[int]:
    """ReLU inputs and the output, where an earlier relaxation makes intervals loose."""
    out = []
    relaxed = False
    for k, step in enumerate(steps):
        if isinstance(step, ReluStep) and relaxed:
            out.append(k)
        relaxed = relaxed or isinstance(step, ReluStep | MaxPoolStep)
    return [*out, len(steps)] if relaxed else out


def lp_tighten_report(
    steps: Sequence[Step],
    bounds: Bounds,
    box_index: int = 0,
    time_limit: float = 300.0,
    lp_time_limit: float = 10.0,
) -> LpTightening:
    """``lp_tighten`` with statistics."""
    t0 = time.perf_counter()
    work = _one_box(bounds, box_index, "lp")
    before = relu_stability(steps, work)["stable"]
    lps, complete = 0, True
    for k in _targets(steps):
        enc = encode(steps, work, end=k, mode="lp")
        lo, hi = work.lo[k][0], work.hi[k][0]
        todo = np.flatnonzero((lo < 0) & (hi > 0)) if k < len(steps) else np.arange(lo.size)
        for i in todo:
            var = int(enc.layer_vars[k][i])
            for sign in (1.0, -1.0):
                left = time_limit - (time.perf_counter() - t0)
                if left <= 0:
                    complete = False
                    break
                bound = lp_lower_bound(enc, unit(enc.n_vars, var, sign), min(left, lp_time_limit))
                lps += 1
                if bound is None:
                    continue
                if sign > 0:
                    lo[i] = max(lo[i], bound)
                    enc.lb[var] = max(enc.lb[var], bound)
                else:
                    hi[i] = min(hi[i], -bound)
                    enc.ub[var] = max(min(enc.ub[var], -bound), enc.lb[var])
        _propagate(steps, work, k)
        if not complete:
            break
    after = relu_stability(steps, work)["stable"]
    return LpTightening(work, before, after, lps, time.perf_counter() - t0, complete)


def lp_tighten(
    steps: Sequence[Step],
    bounds: Bounds,
    box_index: int = 0,
    time_limit: float = 300.0,
    lp_time_limit: float = 10.0,
) -> Bounds:
    """Bounds of one box (method ``"lp"``) tightened by the LP (triangle) relaxation.

    Layer by layer, each unstable ReLU input (and every output) is minimized
    and maximized over the LP of the steps before it, built on the bounds
    tightened so far; each new bound is made rigorous from the LP duals and
    intersected with the old one.  Stops early, still sound, at ``time_limit``.
    """
    return lp_tighten_report(steps, bounds, box_index, time_limit, lp_time_limit).bounds


# --- exact bounds and stability -------------------------------------------------


@dataclass
class ExactBounds:
    """Per-neuron MILP min/max of one step input; ``*_optimal`` says HiGHS proved it
    (otherwise the bound is HiGHS's dual bound, or the input bound)."""

    lower: np.ndarray
    upper: np.ndarray
    lower_optimal: np.ndarray
    upper_optimal: np.ndarray
    argmin: np.ndarray
    """Input (n, n_in) reaching the minimum found; NaN rows where none."""
    argmax: np.ndarray
    seconds: np.ndarray

    @classmethod
    def start(cls, lo: np.ndarray, hi: np.ndarray, n_in: int) -> ExactBounds:
        n = lo.size
        nan, no = np.full((n, n_in), np.nan), np.zeros(n, bool)
        return cls(lo.copy(), hi.copy(), no, no.copy(), nan, nan.copy(), np.zeros(n))


def _extreme(
    enc: Encoding, var: int, sign: float, fallback: float, limit: float
) -> tuple[float, bool, np.ndarray | None]:
    """``sign * min(sign * v[var])``: value, optimal?, input reaching it."""
    res = solve_milp(enc, unit(enc.n_vars, var, sign), limit)
    x = None if res.x is None else enc.input_of(res.x)
    if res.status == 0 and res.fun is not None:
        return sign * float(res.fun), True, x
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not np.isfinite(dual):
        return fallback, False, x
    value = sign * float(dual)
    return (max(value, fallback) if sign > 0 else min(value, fallback)), False, x


def milp_exact_bounds(
    steps: Sequence[Step],
    bounds: Bounds,
    layers: Sequence[int],
    box_index: int = 0,
    time_limit_per_neuron: float = 30.0,
) -> dict[int, ExactBounds]:
    """Exact min and max of every neuron of the inputs of steps ``layers`` (``len(steps)``
    is the output) over the box, by one MILP each (time-limited per neuron)."""
    result = {}
    for k in layers:
        enc = encode(steps, bounds, end=k, box_index=box_index, mode="milp")
        lo, hi = bounds.lo[k][box_index], bounds.hi[k][box_index]
        eb = ExactBounds.start(lo, hi, bounds.lo[0].shape[1])
        for i in range(lo.size):
            t0 = time.perf_counter()
            var = int(enc.layer_vars[k][i])
            for sign, value, optimal, arg in (
                (1.0, eb.lower, eb.lower_optimal, eb.argmin),
                (-1.0, eb.upper, eb.upper_optimal, eb.argmax),
            ):
                value[i], optimal[i], x = _extreme(enc, var, sign, value[i], time_limit_per_neuron)
                if x is not None:
                    arg[i] = x
            eb.seconds[i] = time.perf_counter() - t0
        result[k] = eb
    return result


@dataclass
class Stability:
    """Per-neuron labels of one ReLU step: ``active`` (input >= 0 on the whole box),
    ``inactive`` (<= 0), ``both`` or ``unknown`` (a MILP ran out of time)."""

    labels: np.ndarray
    decided_by: np.ndarray
    """``bounds`` (the given bounds), ``sampling`` (witnesses of both signs) or ``milp``."""
    pos_witness: np.ndarray
    """Input (n, n_in) with a positive pre-activation; NaN rows where none."""
    neg_witness: np.ndarray
    confirmed: np.ndarray
    """(n, 2): the positive / negative witness was checked by float64 evaluation."""
    seconds: np.ndarray
    """MILP time spent per neuron."""
    total_seconds: float = 0.0

    @classmethod
    def start(cls, n: int, n_in: int) -> Stability:
        nan = np.full((n, n_in), np.nan)
        labels, by = np.full(n, "unknown", dtype="<U8"), np.full(n, "milp", dtype="<U8")
        return cls(labels, by, nan, nan.copy(), np.zeros((n, 2), bool), np.zeros(n))

    def counts(self) -> dict[str, int]:
        names = ("active", "inactive", "both", "unknown")
        return {name: int(np.sum(self.labels == name)) for name in names}

    def record(self, xs: np.ndarray, pre: np.ndarray) -> None:
        """Take witnesses from inputs ``xs`` whose pre-activations are ``pre``."""
        for col, sign, store in ((0, 1.0, self.pos_witness), (1, -1.0, self.neg_witness)):
            best = np.argmax(sign * pre, axis=0)
            value = sign * pre[best, np.arange(pre.shape[1])]
            new = (value > 0) & ~self.confirmed[:, col]
            store[new] = xs[best[new]]
            self.confirmed[new, col] = True


def _sign_side(
    steps: Sequence[Step], enc: Encoding, k: int, i: int, sign: float, limit: float
) -> tuple[str, np.ndarray | None]:
    """Can ``sign * x_i > 0`` (x_i: input i of step k)?  ``possible``/``impossible``/
    ``unknown``, with a candidate input when one was found."""
    t0 = time.perf_counter()
    var = int(enc.layer_vars[k][i])
    half = replace(enc, lb=enc.lb.copy(), ub=enc.ub.copy())
    if sign > 0:
        half.lb[var] = max(half.lb[var], 0.0)
    else:
        half.ub[var] = min(half.ub[var], 0.0)
    res = solve_milp(half, unit(enc.n_vars, var, -sign), limit, first_solution=True)
    if res.status == 2:
        return "impossible", None
    if res.x is None:
        return "unknown", None
    x = enc.input_of(res.x)
    if sign * forward_steps(steps[:k], x)[k][0, i] > 0:
        return "possible", x
    # the first point found may sit on the boundary: optimize sign * x_i instead
    res = solve_milp(enc, unit(enc.n_vars, var, -sign), limit - (time.perf_counter() - t0))
    if res.status == 0 and -float(res.fun) <= 0:
        return "impossible", None
    if res.x is None:
        return "unknown", x
    x = enc.input_of(res.x)
    model_positive = -float(res.fun) > 0
    confirmed = sign * forward_steps(steps[:k], x)[k][0, i] > 0
    return ("possible" if confirmed or model_positive else "unknown"), x


def _label(pos: str, neg: str) -> str:
    if pos == "impossible":
        return "inactive"
    if neg == "impossible":
        return "active"
    return "both" if pos == neg == "possible" else "unknown"


def exact_stability(
    steps: Sequence[Step],
    bounds: Bounds,
    relu_step_index: int,
    box_index: int = 0,
    time_limit_per_query: float = 30.0,
    samples: int = 2048,
    seed: int = 0,
    time_limit: float = float("inf"),
) -> Stability:
    """Decide for each unit of ReLU step ``relu_step_index`` whether its input can be
    positive and whether it can be negative on the box.

    Units stable under ``bounds`` are labelled from them; sampling then finds
    witnesses of both signs for most unstable units; each remaining sign is a
    MILP feasibility query (tighter ``bounds``, e.g. from ``lp_tighten``, make
    the big-M encoding smaller).  Every witness found by a MILP is evaluated in
    float64 and serves all units of the layer.  Units left when ``time_limit``
    (seconds in all) runs out stay ``unknown``.
    """
    t_start = time.perf_counter()
    k = relu_step_index
    if not isinstance(steps[k], ReluStep):
        raise ValueError(f"step {k} is not a ReLU")
    lo, hi = bounds.lo[k][box_index], bounds.hi[k][box_index]
    x_lo, x_hi = bounds.lo[0][box_index], bounds.hi[0][box_index]
    n, n_in = lo.size, x_lo.size
    st = Stability.start(n, n_in)
    st.labels[lo >= 0], st.labels[hi <= 0] = "active", "inactive"
    pending = np.flatnonzero((lo < 0) & (hi > 0))
    st.decided_by[(lo >= 0) | (hi <= 0)] = "bounds"
    if samples and pending.size:
        xs = np.random.default_rng(seed).uniform(x_lo, x_hi, (samples, n_in))
        st.record(xs, forward_steps(steps[:k], xs)[k])
    enc: Encoding | None = None
    for i in pending:
        if st.confirmed[i].all():
            st.labels[i], st.decided_by[i] = "both", "sampling"
            continue
        t0 = time.perf_counter()
        enc = enc or encode(steps, bounds, end=k, box_index=box_index, mode="milp")
        sides = []
        for col, sign, store in ((0, 1.0, st.pos_witness), (1, -1.0, st.neg_witness)):
            if st.confirmed[i, col]:
                sides.append("possible")
                continue
            left = time_limit - (time.perf_counter() - t_start)
            if left <= 0:
                sides.append("unknown")
                continue
            limit = min(time_limit_per_query, left)
            side, x = _sign_side(steps, enc, k, int(i), sign, limit)
            sides.append(side)
            if x is not None:
                st.record(x[None], forward_steps(steps[:k], x)[k])
                if not st.confirmed[i, col]:
                    store[i] = x  # a MILP point the float64 evaluation does not confirm
        st.labels[i] = _label(*sides)
        st.seconds[i] = time.perf_counter() - t0
    st.total_seconds = time.perf_counter() - t_start
    return st


def exact_stability_all(
    steps: Sequence[Step],
    bounds: Bounds,
    box_index: int = 0,
    time_limit_per_query: float = 30.0,
    samples: int = 2048,
    seed: int = 0,
    time_limit: float = float("inf"),
) -> tuple[dict[int, Stability], Bounds]:
    """``exact_stability`` of every ReLU step, first to last; each layer's labels
    then tighten the bounds (active: input >= 0, inactive: <= 0) used to encode
    the next layers, which makes their MILPs much smaller.  The returned bounds
    (one box, method ``"exact"``) inherit the MILP's tolerances: not a proof."""
    t0 = time.perf_counter()
    work = _one_box(bounds, box_index, "exact")
    result = {}
    for k, step in enumerate(steps):
        if not isinstance(step, ReluStep):
            continue
        left = time_limit - (time.perf_counter() - t0)
        st = exact_stability(steps, work, k, 0, time_limit_per_query, samples, seed, left)
        result[k] = st
        lo, hi = work.lo[k][0], work.hi[k][0]
        lo[st.labels == "active"] = np.maximum(lo[st.labels == "active"], 0.0)
        hi[st.labels == "inactive"] = np.minimum(hi[st.labels == "inactive"], 0.0)
        _propagate(steps, work, k)
    return result, work


# --- counterexample search -----------------------------------------------------


@dataclass
class MilpResult:
    """``infeasible``: no input of the box reaches the unsafe set (up to HiGHS's
    tolerances, covered by ``UNSAFE_SLACK``); ``feasible``: ``x`` is a candidate."""

    status: str
    x: np.ndarray | None
    seconds: float
    polytope: int | None = None
    """Index of the unsafe polytope ``x`` reaches (``milp_find_any``)."""
    message: str = ""


def _row_range(A: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enclosure of ``A y`` over the box ``[lo, hi]`` (widened for rounding)."""
    pos, neg = np.maximum(A, 0), np.minimum(A, 0)
    pad = 1e-9 * (np.abs(A) @ np.maximum(np.abs(lo), np.abs(hi))) + 1e-12
    return pos @ lo + neg @ hi - pad, pos @ hi + neg @ lo + pad


def _unsafe_rows(
    enc: Encoding, polytopes: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[Encoding | None, list[int]]:
    """The encoding plus a variable ``t <= 0`` (last) with ``A y - b <= t`` for some
    polytope (one binary ``z`` per polytope when several: ``A y - b <= t + M (1 - z)``,
    ``sum z >= 1``), and the polytope of each binary; None if none is reachable."""
    y = enc.layer_vars[-1]
    live = []
    for p, (A, b) in enumerate(polytopes):
        A, b = np.atleast_2d(np.asarray(A, float)), np.asarray(b, float).reshape(-1)
        b = b + UNSAFE_SLACK * (1 + np.abs(b))
        low, high = _row_range(A, enc.lb[y], enc.ub[y])
        if not np.any(low > b):
            live.append((p, A, b, low - b, high - b))
    if not live:
        return None, []
    n, q = enc.n_vars, len(live) if len(live) > 1 else 0
    t_col, t_lo = n + q, min(0.0, *(float(lo.min()) for *_, lo, _ in live))
    blocks, rhs = [], []
    for j, (_, A, b, _, high) in enumerate(live):
        block = sparse.lil_array((len(b), n + q + 1))
        block[:, y] = A
        block[:, t_col] = -1.0
        big = np.maximum(high - t_lo, 0.0) * (1 + 1e-9)
        if q:
            block[:, n + j] = big[:, None]
        blocks.append(block)
        rhs.append(b + big if q else b)
    if q:
        row = sparse.lil_array((1, n + q + 1))
        row[0, n : n + q] = -1.0
        blocks.append(row)
        rhs.append(np.array([-1.0]))
    lb, ub = np.r_[np.zeros(q), t_lo], np.r_[np.ones(q), 0.0]
    out = with_rows(enc, sparse.csr_array(sparse.vstack(blocks)), np.concatenate(rhs), lb, ub, True)
    out.integrality[-1] = 0
    return out, [p for p, *_ in live]


def milp_find_any(
    steps: Sequence[Step],
    bounds: Bounds,
    polytopes: Sequence[tuple[np.ndarray, np.ndarray]],
    box_index: int = 0,
    time_limit: float = 60.0,
) -> MilpResult:
    """Search the box for an input whose output lies in one of the polytopes
    ``{y : A y <= b}`` (a disjunction, one binary per polytope).

    Each ``b`` is enlarged by ``UNSAFE_SLACK * (1 + |b|)`` before solving, so an
    ``infeasible`` answer survives HiGHS's feasibility tolerances; the encoding
    covers float32 rounding.  The objective minimizes the worst row's excess
    ``t`` (bounded by 0), which guides branch and bound; HiGHS stops at its
    first feasible point.  A ``feasible`` x is a candidate: re-check it in
    float32 (it may miss by up to that slack or the rounding margin).
    """
    t0 = time.perf_counter()
    enc = encode(steps, bounds, box_index=box_index, mode="milp")
    full, which = _unsafe_rows(enc, polytopes)
    if full is None:
        return MilpResult("infeasible", None, time.perf_counter() - t0, None, "output bounds")
    left = time_limit - (time.perf_counter() - t0)
    res = solve_milp(full, unit(full.n_vars, full.n_vars - 1), left, first_solution=True)
    seconds = time.perf_counter() - t0
    if res.status == 2:
        return MilpResult("infeasible", None, seconds, None, res.message)
    if res.x is None:
        return MilpResult("timeout", None, seconds, None, res.message)
    x = np.clip(enc.input_of(res.x), enc.lb[enc.layer_vars[0]], enc.ub[enc.layer_vars[0]])
    y = forward_steps(steps, x)[-1][0]
    hits = [p for p in which if np.all(np.atleast_2d(polytopes[p][0]) @ y <= polytopes[p][1])]
    return MilpResult("feasible", x, seconds, hits[0] if hits else which[0], res.message)


def milp_find(
    steps: Sequence[Step],
    bounds: Bounds,
    A: np.ndarray,
    b: np.ndarray,
    box_index: int = 0,
    time_limit: float = 60.0,
) -> MilpResult:
    """Is there an input in box ``box_index`` whose output ``y`` has ``A y <= b``?
    (``A``: (r, n_out).)  See ``milp_find_any`` for the tolerance slack."""
    return milp_find_any(steps, bounds, [(A, b)], box_index, time_limit)
