"""Checks on what callers feed a model: shape, dtype, finiteness.

Needs only numpy, so the deployment runtime can use it without the compiler.
"""

from __future__ import annotations

import numpy as np

from relugate.compiler.errors import BadInput

ACCEPTED_DTYPES = (np.float32, np.float64)


def check_batch(
    x: object, shape: tuple[int, ...], has_batch: bool, name: str
) -> tuple[np.ndarray, bool]:
    """Validate ``x`` for an input declared as ``shape`` and return ``(batch, single)``.

    ``x`` is either one input shaped exactly like ``shape`` or a batch shaped
    ``(n, *sample_shape)``.  The batch comes back as contiguous float32;
    ``single`` tells whether the caller passed one input.
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
    finite = np.isfinite(batch.reshape(len(batch), -1))
    if not finite.all():
        row, col = (int(v) for v in np.argwhere(~finite)[0])
        raise BadInput(
            f"input {name!r} holds NaN or Inf (or a value beyond float32) "
            f"at row {row}, element {col}"
        )
    return batch, single
