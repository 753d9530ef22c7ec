"""Input domains: axis-aligned boxes over the flattened model input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relugate.compiler.errors import BadSpec


@dataclass(frozen=True, eq=False)
class Box:
    """``lo <= x <= hi`` elementwise, over the model input flattened in C order."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        lo = np.asarray(self.lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.hi, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise BadSpec(f"box bounds differ in size: {lo.size} lower, {hi.size} upper")
        if lo.size == 0:
            raise BadSpec("box has no dimensions")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            bad = int(np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))[0])
            raise BadSpec(f"box bound of input {bad} is not finite ({lo[bad]}, {hi[bad]})")
        if np.any(lo > hi):
            bad = int(np.flatnonzero(lo > hi)[0])
            raise BadSpec(f"box is empty: input {bad} has lower {lo[bad]} > upper {hi[bad]}")
        lo.setflags(write=False)
        hi.setflags(write=False)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def dim(self) -> int:
        return int(self.lo.size)

    @property
    def center(self) -> np.ndarray:
        return (self.lo + self.hi) / 2.0

    @property
    def width(self) -> np.ndarray:
        return self.hi - self.lo

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Per-row membership of ``x`` (shape ``(n, dim)`` or ``(dim,)``)."""
        flat = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        return np.all((flat >= self.lo - tol) & (flat <= self.hi + tol), axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points drawn uniformly from the box, shape ``(n, dim)``, float64."""
        return self.lo + rng.random((n, self.dim)) * (self.hi - self.lo)

    def corners_and_center(self) -> np.ndarray:
        """The center and the two extreme corners: cheap points worth always testing."""
        return np.stack([self.center, self.lo, self.hi])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Box):
            return NotImplemented
        return bool(np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi))

    def __hash__(self) -> int:
        return hash((self.lo.tobytes(), self.hi.tobytes()))

    def to_json(self) -> dict[str, list[float]]:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}
