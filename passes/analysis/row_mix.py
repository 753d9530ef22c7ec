"""Implied rows of an unsafe polytope: non-negative combinations of its rows.

A box is safe when no input reaches ``{y : A y <= b}``, i.e. when
``max_i (A_i y - b_i) > 0`` everywhere on it.  Bounding each row alone
proves that only if one row wins on the whole box; near the border between
two rows' regions (ACAS Xu prop 2: "Y_0 is not the largest", where the
largest other output changes across the box) none does.  Every
``lam >= 0`` gives an implied row ``(lam A) y <= lam b`` of the unsafe set,
and ``max_i z_i >= sum_i lam_i z_i`` on the simplex, so bounding that one
row can close the box (the Lagrangian dual of the row conjunction).

``mixing_weights`` chooses ``lam`` per box from CROWN's per-row linear
bounds ``slack_i(x) >= a_i x + c_i`` by maximizing their combination's
minimum over the box, exactly along every pair of rows (the minimum is
concave and piecewise linear there, so its breakpoints suffice).  The
choice needs no rigour: the mixed row is bounded again by CROWN, and
``mixed_slack_tolerance`` covers the rounding of the mixed row itself.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from relugate.passes.analysis.steps import U64


def _box_minimum(k: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``min_x k . x`` over the box, for coefficients k (..., d) and boxes (B, d)
    broadcast on the leading axis."""
    shape = (lo.shape[0],) + (1,) * (k.ndim - 2) + (lo.shape[1],)
    return np.minimum(k * lo.reshape(shape), k * hi.reshape(shape)).sum(axis=-1)


def mixing_weights(
    slack: np.ndarray, coeffs: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per box, weights ``lam`` (B, r) on the simplex and the estimated slack of the
    mixed row, from per-row slacks (B, r) and input coefficients (B, r, d)."""
    B, r, _ = coeffs.shape
    offset = slack - _box_minimum(coeffs, lo, hi)  # c_i: slack_i(x) >= a_i x + c_i
    best_row = slack.argmax(axis=1)
    lam = np.zeros((B, r))
    lam[np.arange(B), best_row] = 1.0
    value = slack.max(axis=1)
    for i, k in combinations(range(r), 2):
        a_i, a_k = coeffs[:, i], coeffs[:, k]
        denom = a_i - a_k
        with np.errstate(divide="ignore", invalid="ignore"):
            breaks = np.where(denom != 0, a_i / np.where(denom != 0, denom, 1.0), 0.0)
        t = np.clip(np.concatenate([np.zeros((B, 1)), np.ones((B, 1)), breaks], axis=1), 0, 1)
        mixed = (1 - t)[..., None] * a_i[:, None, :] + t[..., None] * a_k[:, None, :]
        got = (1 - t) * offset[:, [i]] + t * offset[:, [k]] + _box_minimum(mixed, lo, hi)
        at = got.argmax(axis=1)
        top = got[np.arange(B), at]
        better = top > value
        value = np.where(better, top, value)
        t_best = t[np.arange(B), at]
        pair = np.zeros((B, r))
        pair[:, i], pair[:, k] = 1 - t_best, t_best
        lam = np.where(better[:, None], pair, lam)
    return lam, value


def mixed_slack_tolerance(
    lam: np.ndarray, A: np.ndarray, b: np.ndarray, y_abs: np.ndarray
) -> np.ndarray:
    """Bound on how far rounding moves the mixed row ``fl(lam A) y - fl(lam b)`` from
    ``lam (A y - b)`` for ``|y| <= y_abs`` (B, n_out): subtract it from its slack."""
    r = A.shape[0]
    size = np.abs(lam) @ np.abs(A)
    return 4 * (r + 2) * U64 * ((size * y_abs).sum(axis=1) + np.abs(lam) @ np.abs(b)) * 2
