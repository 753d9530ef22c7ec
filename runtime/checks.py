"""Checks on what callers feed a model: shape, dtype, finiteness.

Needs only numpy, so the deployment runtime can use it without the compiler.
"""

from __future__ import annotations

import numpy as np

from relugate.compiler.errors import BadInput

ACCEPTED_DTYPES = (np.float32, np.float64)


def check_batch(
    x: object, shape: tuple[int, ...], has_batch: bool, name: str, finite: bool = True
) -> tuple[np.ndarray, bool]:
    """Validate ``x`` for an input declared as ``shape`` and return ``(batch, single)``.

    ``x`` is either one input shaped exactly like ``shape`` or a batch shaped
    ``(n, *sample_shape)``.  The batch comes back as contiguous float32;
    ``single`` tells whether the caller passed one input.  ``finite=False``
    leaves the NaN/Inf check to the caller (a domain check catches them
    for free: see ``outside_domain``).
    """
    arr = np.asarray(x)
    if arr.dtype.type not in ACCEPTED_DTYPES:
        raise BadInput(f"input {name!r} must be float32 or float64, got {arr.dtype}")
    sample = shape[1:] if has_batch else shape
    if arr.shape == tuple(shape):
        single = True
    elif arr.ndim == len(sample) + 1 and arr.shape[1:] == tuple(sample) and arr.shape[0] > 0:
        single = False
    else:
        raise BadInput(
            f"input {name!r} must have shape {tuple(shape)} or (N, {', '.join(map(str, sample))}); "
            f"got {arr.shape}"
        )
    with np.errstate(over="ignore"):  # values beyond float32 become Inf, reported just below
        batch = np.ascontiguousarray(arr, dtype=np.float32).reshape((-1, *sample))
    if finite:
        check_finite(batch.reshape(len(batch), -1), name)
    return batch, single


def domain_bounds(lo: object, hi: object) -> tuple[np.ndarray, np.ndarray]:
    """The domain ``[lo, hi]`` widened to float32 values, as float32 arrays.

    ``lo`` rounds down and ``hi`` up, the widening every bound analysis makes
    (``passes/analysis/steps.float32_box``): a real input in the box rounds
    to a float32 value in the widened box, and the proofs cover exactly that
    box, so comparing float32 inputs with it is exact and clamping into it
    stays covered.
    """
    lo64 = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi64 = np.asarray(hi, dtype=np.float64).reshape(-1)
    with np.errstate(over="ignore"):
        lo32 = lo64.astype(np.float32)
        hi32 = hi64.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) > lo64, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    hi32 = np.where(hi32.astype(np.float64) < hi64, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return lo32.astype(np.float32), hi32.astype(np.float32)


def outside_domain(flat: np.ndarray, lo32: np.ndarray, hi32: np.ndarray) -> np.ndarray:
    """Per row of ``flat`` ``(n, d)``: True where some value lies outside ``[lo32, hi32]``.

    NaN compares false, so a row holding NaN counts as outside too.
    """
    inside = (flat >= lo32) & (flat <= hi32)
    return np.asarray(~inside.all(axis=1))


def check_finite(flat: np.ndarray, name: str, rows: np.ndarray | None = None) -> None:
    """Raise ``BadInput`` naming the first NaN/Inf in ``flat`` (only ``rows``, if given)."""
    part = flat if rows is None else flat[rows]
    finite = np.isfinite(part)
    if finite.all():
        return
    row, col = (int(v) for v in np.argwhere(~finite)[0])
    if rows is not None:
        row = int(np.flatnonzero(rows)[row])
    raise BadInput(
        f"input {name!r} holds NaN or Inf (or a value beyond float32) at row {row}, element {col}"
    )
