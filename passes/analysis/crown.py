"""Symbolic back-substitution bounds (CROWN / DeepPoly), batched over boxes.

For a target layer, linear bounds ``A x + c`` on its values are carried back
through every step to the input box, where they are concretized.  A ReLU with
input in ``[l, u]`` (``l < 0 < u``) is relaxed by the chord above and by
``alpha * x`` below (``alpha`` is 1 when ``u > -l``, else 0, unless the caller
passes its own slopes).  Each affine step adds its float32 rounding margin as
a bounded perturbation (see ``steps``), so the bounds hold for the deployed
float32 network.  A max-pool step stops the walk: bounds are concretized on
its output interval.  Every bound is intersected with interval propagation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from relugate.passes.analysis.bounds import Bounds, as_batch
from relugate.passes.analysis.interval import step_interval
from relugate.passes.analysis.steps import U64, Affine, MaxPoolStep, ReluStep, Step, float32_box

MAX_ELEMENTS = 4e7
"""Back-substitution for a layer is skipped (interval bounds used) above this many
coefficients (boxes x rows x width), to bound memory."""


@dataclass
class Linear:
    """Lower (or upper) linear bounds ``A x + c`` on some rows, per box: A (B, m, n), c (B, m)."""

    A: np.ndarray
    c: np.ndarray
    mag: np.ndarray  # magnitude of what was summed into c, for the float64 slack


def relu_relaxation(
    lo: np.ndarray, hi: np.ndarray, alpha: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slopes of the lower and upper linear bounds and the upper intercept of ReLU on [lo, hi]."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    denom = np.where(unstable, hi - lo, 1.0)
    up_slope = np.where(active, 1.0, np.where(unstable, hi / denom, 0.0))
    up_icpt = np.where(unstable, -up_slope * lo, 0.0)
    default = (hi > -lo).astype(np.float64)
    lo_slope = np.where(active, 1.0, np.where(unstable, default if alpha is None else alpha, 0.0))
    return lo_slope, up_slope, up_icpt


def _through_affine(lin: Linear, step: Affine, x_abs: np.ndarray, sign: np.ndarray) -> Linear:
    """``sign`` per row: -1 for rows bounded from below, +1 for rows bounded from above."""
    bias = step.bias()
    spread = _matvec(np.abs(lin.A), step.margin(x_abs))
    c = lin.c + lin.A @ bias + sign * spread
    mag = lin.mag + np.abs(lin.A) @ np.abs(bias) + spread
    return Linear(step.apply_transpose(lin.A), c, mag)


def _through_relu(
    lin: Linear, lo: np.ndarray, hi: np.ndarray, alpha: np.ndarray | None, lower: np.ndarray
) -> Linear:
    """A lower-bound row takes the lower line where its coefficient is positive and the
    upper line where it is negative; an upper-bound row the other way round."""
    lo_slope, up_slope, up_icpt = relu_relaxation(lo, hi, alpha)
    takes_lower = (lin.A > 0) == lower[None, :, None]
    A = lin.A * np.where(takes_lower, lo_slope[:, None, :], up_slope[:, None, :])
    extra = _matvec(np.where(takes_lower, 0.0, lin.A), up_icpt)
    return Linear(A, lin.c + extra, lin.mag + np.abs(extra))


def _concretize(lin: Linear, lo: np.ndarray, hi: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Minimum (``lower`` rows) or maximum of ``A x + c`` over the box, in center-radius
    form; the rounding of the center and radius is inside the float64 slack."""
    abs_a = np.abs(lin.A)
    center = _matvec(lin.A, (lo + hi) / 2)
    spread = _matvec(abs_a, (hi - lo) / 2)
    x_abs = np.maximum(np.abs(lo), np.abs(hi))
    slack = 4 * (lin.A.shape[-1] + 8) * U64 * (_matvec(abs_a, x_abs) + lin.mag)
    return center + lin.c + np.where(lower, -(spread + slack), spread + slack)


def _matvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A[b] @ x[b]`` for every box: (B, m, n) x (B, n) -> (B, m)."""
    return np.matmul(A, x[:, :, None])[..., 0]


def backsubstitute(
    steps: Sequence[Step],
    end: int,
    C: np.ndarray,
    bounds: Bounds,
    lower: bool | np.ndarray,
    alphas: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bound ``C @ v`` where ``v`` is the input of step ``end``; C is (B, m, n_end).

    ``lower`` (one flag, or one per row) says which rows get lower bounds; the
    others get upper bounds.  Returns the bounds (B, m) and the coefficients at
    the level where the walk stopped (the input, or a max-pool output), for
    split heuristics.
    """
    B, m, _ = C.shape
    rows_lower = np.broadcast_to(np.asarray(lower, dtype=bool), (m,))
    sign = np.where(rows_lower, -1.0, 1.0)
    lin = Linear(C.astype(np.float64), np.zeros((B, m)), np.zeros((B, m)))
    for j in range(end - 1, -1, -1):
        step = steps[j]
        lo, hi = bounds.lo[j], bounds.hi[j]
        if isinstance(step, Affine):
            lin = _through_affine(lin, step, np.maximum(np.abs(lo), np.abs(hi)), sign)
        elif isinstance(step, ReluStep):
            alpha = None if alphas is None else alphas.get(j)
            lin = _through_relu(lin, lo, hi, alpha, rows_lower)
        elif isinstance(step, MaxPoolStep):
            out_lo, out_hi = bounds.lo[j + 1], bounds.hi[j + 1]
            # lin is expressed on the max-pool output: concretize there
            return _concretize(lin, out_lo, out_hi, rows_lower), lin.A
    return _concretize(lin, bounds.lo[0], bounds.hi[0], rows_lower), lin.A


def _wants_symbolic(steps: Sequence[Step], k: int) -> bool:
    """Tight bounds pay off on a ReLU's or max-pool's input, and on the final output."""
    if k + 1 >= len(steps):
        return True
    return isinstance(steps[k + 1], ReluStep | MaxPoolStep)


def _rows_worth_tightening(
    steps: Sequence[Step], k: int, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Neurons whose bounds matter: before a ReLU, those intervals leave unstable in some
    box (a stable ReLU's relaxation is exact whatever its bounds); otherwise all."""
    if k + 1 < len(steps) and isinstance(steps[k + 1], ReluStep):
        return np.flatnonzero(((lo < 0) & (hi > 0)).any(axis=0))
    return np.arange(lo.shape[1])


def _has_relaxation_before(steps: Sequence[Step], k: int) -> bool:
    return any(isinstance(s, ReluStep) for s in steps[:k])


def crown_bounds(
    steps: Sequence[Step],
    lo: np.ndarray,
    hi: np.ndarray,
    alphas: dict[int, np.ndarray] | None = None,
    known: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    signs: Mapping[int, np.ndarray] | None = None,
    reuse_until: int = -1,
    max_rows: int | None = None,
) -> Bounds:
    """CROWN bounds on every step's input and the output, over boxes (B, n_in).

    ``known[k]``: bounds already proved for step ``k``'s input on the same boxes
    (e.g. a parent domain's), intersected in; up to step ``reuse_until`` they
    are taken as they are, without back-substitution.  ``signs[j]`` (B, n): a
    branch's assumption that ReLU ``j``'s input is >= 0 (+1) or <= 0 (-1),
    applied before later layers are bounded (the bounds then hold on the branch).
    ``max_rows``: back-substitute at most this many neurons per layer, those with
    the largest relaxation area (the others keep their interval or known bounds)."""
    lo, hi = float32_box(*as_batch(lo, hi))
    bounds = Bounds([lo], [hi], "crown")
    known = known or {}
    for k, step in enumerate(steps):
        i_lo, i_hi = step_interval(step, bounds.lo[k], bounds.hi[k])
        bounds.lo.append(i_lo)
        bounds.hi.append(i_hi)
        _intersect(bounds, k + 1, known)
        reused = k + 1 in known and k + 1 <= reuse_until
        if isinstance(step, Affine) and _wants_symbolic(steps, k) and not reused:
            _tighten(steps, k, bounds, alphas, max_rows)
        if signs and k + 1 in signs:
            _assume(bounds, k + 1, signs[k + 1])
    return bounds


def known_of(bounds: Bounds) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every step's bounds, as ``known`` for a later ``crown_bounds`` on the same boxes."""
    return {k: (lo, hi) for k, (lo, hi) in enumerate(zip(bounds.lo, bounds.hi, strict=True))}


def _intersect(bounds: Bounds, k: int, known: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> None:
    if k in known:
        bounds.lo[k] = np.maximum(bounds.lo[k], known[k][0])
        bounds.hi[k] = np.minimum(bounds.hi[k], known[k][1])


def _assume(bounds: Bounds, k: int, sign: np.ndarray) -> None:
    bounds.lo[k] = np.where(sign > 0, np.maximum(bounds.lo[k], 0.0), bounds.lo[k])
    bounds.hi[k] = np.where(sign < 0, np.minimum(bounds.hi[k], 0.0), bounds.hi[k])


def _tighten(
    steps: Sequence[Step],
    k: int,
    bounds: Bounds,
    alphas: dict[int, np.ndarray] | None,
    max_rows: int | None = None,
) -> None:
    """Back-substitute the output of affine step ``k`` where intervals may be loose."""
    i_lo, i_hi = bounds.lo[k + 1], bounds.hi[k + 1]
    if _has_relaxation_before(steps, k):  # else: affine steps on a box, intervals are exact
        rows = _rows_worth_tightening(steps, k, i_lo, i_hi)
        if max_rows is not None and rows.size > max_rows:
            area = (-np.minimum(i_lo[:, rows], 0) * np.maximum(i_hi[:, rows], 0)).max(axis=0)
            rows = np.sort(rows[np.argsort(-area)[:max_rows]])
        B, n = i_lo.shape
        if not rows.size or B * 2 * rows.size * max(n, bounds.lo[0].shape[1]) > MAX_ELEMENTS:
            return
        pick = np.eye(n)[rows]
        C = np.broadcast_to(np.concatenate([pick, pick]), (B, 2 * rows.size, n))
        side = np.arange(2 * rows.size) < rows.size
        both, _ = backsubstitute(steps, k + 1, C, bounds, lower=side, alphas=alphas)
        bounds.lo[k + 1][:, rows] = np.maximum(i_lo[:, rows], both[:, : rows.size])
        bounds.hi[k + 1][:, rows] = np.minimum(i_hi[:, rows], both[:, rows.size :])


def spec_lower_bounds(
    steps: Sequence[Step],
    bounds: Bounds,
    C: np.ndarray,
    alphas: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower bounds of ``C @ y`` (C: (r, n_out) or (B, r, n_out)) on each box, and the
    input-level coefficients (B, r, n_in) the bound used."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim == 2:
        C = np.broadcast_to(C, (bounds.boxes, *C.shape))
    lb, coeffs = backsubstitute(steps, len(steps), C, bounds, lower=True, alphas=alphas)
    interval_lb = _interval_spec(C, *bounds.output())
    return np.maximum(lb, interval_lb), coeffs


def _interval_spec(C: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    pos, neg = np.maximum(C, 0), np.minimum(C, 0)
    value = np.einsum("brn,bn->br", pos, lo) + np.einsum("brn,bn->br", neg, hi)
    mag = np.einsum("brn,bn->br", np.abs(C), np.maximum(np.abs(lo), np.abs(hi)))
    return value - 4 * (C.shape[-1] + 2) * U64 * mag
