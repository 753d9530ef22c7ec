"""Per-step bounds on a batch of boxes, the common currency of the analyses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Bounds:
    """``lo[k]``, ``hi[k]``: bounds on the input of step ``k`` (``k = len(steps)``: the output),
    each of shape ``(boxes, n_k)``; they enclose what float32 execution can produce."""

    lo: list[np.ndarray]
    hi: list[np.ndarray]
    method: str

    @property
    def boxes(self) -> int:
        return int(self.lo[0].shape[0])

    def output(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo[-1], self.hi[-1]

    def width(self, k: int) -> np.ndarray:
        return self.hi[k] - self.lo[k]

    def select(self, boxes: np.ndarray) -> Bounds:
        """The bounds of some of the boxes (a boolean mask or indices)."""
        return Bounds([lo[boxes] for lo in self.lo], [hi[boxes] for hi in self.hi], self.method)


def as_batch(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    return lo, hi
