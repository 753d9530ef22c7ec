"""Projected sign-gradient descent on the unsafe margin inside many boxes at once.

Input splitting leaves open boxes whose centers and corners are safe; a
violation there may still sit a few gradient steps away.  Each box gets one
start (its most suspicious corner, say) and a few steps of ``x += s (hi - lo)
sign(grad)`` toward the unsafe set, each projected back onto its own box, the
step ``s`` shrinking from ``first`` to a tenth of it.  Every iterate whose
float32 output is unsafe is returned as a candidate, to be confirmed.
"""

from __future__ import annotations

import numpy as np

from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.attack import margin_objective, unsafe_margin


def descend_in_boxes(
    net: Network,
    poly: Polytope,
    start: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    steps: int = 6,
    first: float = 0.25,
) -> np.ndarray:
    """Candidates (n, d) found from ``start`` (B, d) inside boxes ``lo``/``hi``."""
    objective = margin_objective(net, poly)
    x = np.clip(start, lo, hi)
    found = []
    for t in range(steps):
        _, grad = objective(x)
        size = first * (1 - 0.9 * t / max(steps - 1, 1))
        x = np.clip(x + size * (hi - lo) * np.sign(grad), lo, hi)
        y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1)
        found.append(x[unsafe_margin(y.astype(np.float64), poly) <= 0])
    return np.concatenate(found) if found else np.zeros((0, lo.shape[1]))
