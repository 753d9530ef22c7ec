"""Optimizable lower ReLU slopes for the specification bound (alpha-CROWN style).

With intermediate bounds fixed, CROWN's lower bound on ``C y`` is a
function of the lower slope ``alpha`` in [0, 1] chosen for each unstable
ReLU; every choice gives a sound bound.  This module computes that bound
and its gradient with respect to every ``alpha`` (one per box, spec row and
neuron) by a hand-written reverse pass over the back-substitution, and runs
projected gradient ascent, keeping the best bound seen for each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import relu_relaxation
from relugate.passes.analysis.steps import U64, Affine, MaxPoolStep, ReluStep, Step


@dataclass
class _Fixed:
    """What does not change while alpha moves: margins, biases, upper relaxations."""

    margin: dict[int, np.ndarray]
    bias: dict[int, np.ndarray]
    relax: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _fixed(steps: Sequence[Step], bounds: Bounds) -> _Fixed:
    fixed = _Fixed({}, {}, {})
    for j, step in enumerate(steps):
        lo, hi = bounds.lo[j], bounds.hi[j]
        if isinstance(step, Affine):
            fixed.margin[j] = step.margin(np.maximum(np.abs(lo), np.abs(hi)))
            fixed.bias[j] = step.bias()
        elif isinstance(step, ReluStep):
            base_lo, slope_up, icpt = relu_relaxation(lo, hi, None)
            unstable = ((lo < 0) & (hi > 0))[:, None, :]
            fixed.relax[j] = (base_lo[:, None, :], slope_up, icpt, unstable)
    return fixed


@dataclass
class _Record:
    step: int
    before: np.ndarray  # coefficients (B, r, n) entering this step from the output side


def _initial_alphas(steps: Sequence[Step], bounds: Bounds, rows: int) -> dict[int, np.ndarray]:
    alphas = {}
    for j, step in enumerate(steps):
        if isinstance(step, ReluStep):
            lo, hi = bounds.lo[j], bounds.hi[j]
            alphas[j] = np.broadcast_to(
                (hi > -lo)[:, None, :], (lo.shape[0], rows, lo.shape[1])
            ).astype(float)
    return alphas


@dataclass
class Evaluation:
    """One back-substitution of the spec bound, with its gradients."""

    value: np.ndarray  # lower bound per box and row (B, r)
    alpha_grads: dict[int, np.ndarray]  # d value / d alpha, per ReLU step (B, r, n)
    beta_grads: dict[int, np.ndarray]  # d value / d beta, per split ReLU step (B, r, n)
    coeffs: np.ndarray  # coefficients where the walk stopped (B, r, n_stop)
    relu_lams: dict[int, np.ndarray]  # coefficients on each ReLU's output (B, r, n)


def evaluate(
    steps: Sequence[Step],
    bounds: Bounds,
    C: np.ndarray,
    alphas: dict[int, np.ndarray],
    fixed: _Fixed | None = None,
    betas: dict[int, np.ndarray] | None = None,
    signs: dict[int, np.ndarray] | None = None,
) -> Evaluation:
    """Lower bound of ``C y`` per box and row and its gradients.

    ``signs[j]`` (B, n): +1 where a branch assumes ReLU ``j``'s input >= 0, -1
    where it assumes <= 0, 0 elsewhere.  Each assumption ``s z >= 0`` enters as
    the Lagrangian term ``-beta s z`` (beta >= 0, beta-CROWN), sound for every
    beta, so the bound holds on the branch whatever beta is."""
    fixed = fixed or _fixed(steps, bounds)
    betas, signs = betas or {}, signs or {}
    lam = C.astype(np.float64)
    const = np.zeros(lam.shape[:2])
    mag = np.zeros(lam.shape[:2])
    records: list[_Record] = []
    relu_lams: dict[int, np.ndarray] = {}
    stop = 0
    for j in range(len(steps) - 1, -1, -1):
        step = steps[j]
        if isinstance(step, MaxPoolStep):
            stop = j + 1
            break
        records.append(_Record(j, lam))
        if isinstance(step, Affine):
            margin, bias = fixed.margin[j], fixed.bias[j]
            const = const + lam @ bias - np.einsum("brn,bn->br", np.abs(lam), margin)
            mag = mag + np.abs(lam) @ np.abs(bias) + np.einsum("brn,bn->br", np.abs(lam), margin)
            lam = step.apply_transpose(lam)
        else:
            relu_lams[j] = lam
            slope_lo, slope_up, icpt = _slopes(fixed, j, alphas[j])
            neg = np.minimum(lam, 0)
            extra = np.einsum("brn,bn->br", neg, icpt)
            const, mag = const + extra, mag + np.abs(extra)
            lam = np.maximum(lam, 0) * slope_lo + neg * slope_up[:, None, :]
            if j in betas:
                lam = lam - betas[j] * signs[j][:, None, :]
    lo_s, hi_s = bounds.lo[stop], bounds.hi[stop]
    value = np.einsum("brn,bn->br", np.maximum(lam, 0), lo_s) + np.einsum(
        "brn,bn->br", np.minimum(lam, 0), hi_s
    )
    x_abs = np.maximum(np.abs(lo_s), np.abs(hi_s))
    slack = 4 * (lam.shape[-1] + 8) * U64 * (np.einsum("brn,bn->br", np.abs(lam), x_abs) + mag)
    alpha_grads, beta_grads = _reverse(steps, fixed, records, lam, lo_s, hi_s, alphas, signs)
    return Evaluation(value + const - slack, alpha_grads, beta_grads, lam, relu_lams)


def bound_and_gradient(
    steps: Sequence[Step],
    bounds: Bounds,
    C: np.ndarray,
    alphas: dict[int, np.ndarray],
    fixed: _Fixed | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    """Lower bound of ``C y`` per box and row, its gradient in each alpha, and the
    coefficients at the level where the walk stopped."""
    ev = evaluate(steps, bounds, C, alphas, fixed)
    return ev.value, ev.alpha_grads, ev.coeffs


def _slopes(fixed: _Fixed, j: int, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower slopes (B, r, n) with alpha on unstable neurons; upper slope and intercept (B, n)."""
    base_lo, slope_up, icpt, unstable = fixed.relax[j]
    return np.where(unstable, alpha, base_lo), slope_up, icpt


def _reverse(
    steps: Sequence[Step],
    fixed: _Fixed,
    records: list[_Record],
    lam: np.ndarray,
    lo_s: np.ndarray,
    hi_s: np.ndarray,
    alphas: dict[int, np.ndarray],
    signs: dict[int, np.ndarray],
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """``grad`` is d value / d (coefficients at the current level), moving outward."""
    grad = np.where(lam > 0, lo_s[:, None, :], hi_s[:, None, :])
    alpha_grads: dict[int, np.ndarray] = {}
    beta_grads: dict[int, np.ndarray] = {}
    for rec in reversed(records):
        step = steps[rec.step]
        before = rec.before
        if isinstance(step, Affine):
            margin = fixed.margin[rec.step]
            grad = step.apply(grad) + fixed.bias[rec.step] - np.sign(before) * margin[:, None, :]
        else:
            if rec.step in signs:
                beta_grads[rec.step] = -grad * signs[rec.step][:, None, :]
            slope_lo, slope_up, icpt = _slopes(fixed, rec.step, alphas[rec.step])
            unstable = fixed.relax[rec.step][3]
            alpha_grads[rec.step] = np.where(unstable, grad * np.maximum(before, 0), 0.0)
            positive = before > 0
            grad = np.where(
                positive, grad * slope_lo, grad * slope_up[:, None, :] + icpt[:, None, :]
            )
    return alpha_grads, beta_grads


def optimized_spec_bounds(
    steps: Sequence[Step], bounds: Bounds, C: np.ndarray, iterations: int = 10, lr: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """The best lower bound of ``C y`` found per box and row, and its coefficients."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim == 2:
        C = np.broadcast_to(C, (bounds.boxes, *C.shape))
    alphas = _initial_alphas(steps, bounds, C.shape[1])
    fixed = _fixed(steps, bounds)
    best, grads, coeffs = bound_and_gradient(steps, bounds, C, alphas, fixed)
    best_coeffs = coeffs
    for t in range(iterations):
        step_size = lr * (1 - t / max(iterations, 1))
        for j, g in grads.items():  # ReLUs behind a max-pool are not on the walk
            alphas[j] = np.clip(alphas[j] + step_size * np.sign(g), 0.0, 1.0)
        value, grads, coeffs = bound_and_gradient(steps, bounds, C, alphas, fixed)
        better = value > best
        best = np.where(better, value, best)
        best_coeffs = np.where(better[..., None], coeffs, best_coeffs)
    return best, best_coeffs
