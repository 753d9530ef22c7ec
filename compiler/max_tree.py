"""``MaxTree``: per-output maxima over chosen input elements, as pairwise ReLU trees.

What a max-pool becomes once the bounds have removed the candidates that can
never be a window's maximum (``passes/max_prune``).  On the flattened input
``x`` (``n`` values) extended by one constant zero (``ext = [x, 0]``, index
``n``):

* ``buf = ext[src]``;
* level by level, ``buf = [buf, buf[b] + relu(buf[a] - buf[b])]`` for the
  level's pairs ``(a, b)`` (``max(a, b)``, exact in real arithmetic);
* the output is ``buf[pick]``, reshaped to ``out``.

An output whose window kept one candidate is a plain selection; only pairs
carry a ReLU, so ``relu_units`` is the number of pairs.  ``nonneg`` records
that the input is known ``>= 0`` for every input of the network (it feeds
the analysis lowering, ``passes/analysis/max_tree_steps``).

``SparseAffine`` (``y = A x + b``, ``A`` sparse) is the linear map that
lowering is made of; it is an analysis object, never a layer of a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np
from scipy import sparse

from relugate.compiler.layers import Layer, Shape


def _index(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class MaxTree(Layer):
    n_in: int = 0
    out: Shape = ()
    src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    pairs: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default=(), repr=False)
    pick: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    nonneg: bool = False

    kind = "maxtree"

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", _index(self.src))
        object.__setattr__(self, "pick", _index(self.pick))
        object.__setattr__(self, "pairs", tuple((_index(a), _index(b)) for a, b in self.pairs))
        size = self.src.size
        if self.src.size and (self.src.min() < 0 or self.src.max() > self.n_in):
            raise ValueError(f"maxtree {self.name}: src outside [0, {self.n_in}]")
        for a, b in self.pairs:
            if a.shape != b.shape or (a.size and max(a.max(), b.max()) >= size):
                raise ValueError(f"maxtree {self.name}: a pair reads past the buffer")
            size += a.size
        if self.pick.shape != (prod(self.out),) or (self.pick.size and self.pick.max() >= size):
            raise ValueError(f"maxtree {self.name}: pick does not fit {self.out}")

    @property
    def depth(self) -> int:
        return len(self.pairs)

    def buffer_sizes(self) -> list[int]:
        """Size of ``buf`` before each level and at the end."""
        sizes = [int(self.src.size)]
        for a, _ in self.pairs:
            sizes.append(sizes[-1] + int(a.size))
        return sizes

    def out_shape(self, in_shape: Shape) -> Shape:
        if prod(in_shape) != self.n_in:
            raise ValueError(f"maxtree {self.name} expects {self.n_in} values, got {in_shape}")
        return self.out

    def uses_zero(self) -> bool:
        return bool(np.any(self.src == self.n_in))

    def _buffers(self, x: np.ndarray) -> list[np.ndarray]:
        flat = x.reshape(len(x), -1)
        ext = np.concatenate([flat, np.zeros((len(x), 1), dtype=x.dtype)], axis=1)
        bufs = [ext[:, self.src]]
        for a, b in self.pairs:
            buf = bufs[-1]
            hi, lo = buf[:, a], buf[:, b]
            bufs.append(np.concatenate([buf, lo + np.maximum(hi - lo, 0)], axis=1))
        return bufs

    def forward(self, x: np.ndarray) -> np.ndarray:
        y: np.ndarray = self._buffers(x)[-1][:, self.pick]
        return y.reshape(len(x), *self.out)

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        bufs = self._buffers(x)
        g = np.zeros_like(bufs[-1], dtype=grad.dtype)
        np.add.at(g.T, self.pick, grad.reshape(len(x), -1).T)
        for level in range(self.depth - 1, -1, -1):
            a, b = self.pairs[level]
            buf = bufs[level]
            n = buf.shape[1]
            g_new, g = g[:, n:], g[:, :n].copy()
            wins = buf[:, a] > buf[:, b]
            np.add.at(g.T, a, np.where(wins, g_new, 0).T)
            np.add.at(g.T, b, np.where(wins, 0, g_new).T)
        gx = np.zeros((len(x), self.n_in + 1), dtype=grad.dtype)
        np.add.at(gx.T, self.src, g.T)
        return gx[:, : self.n_in].reshape(x.shape)

    def relu_units(self, in_shape: Shape) -> int:
        return sum(int(a.size) for a, _ in self.pairs)

    def flops(self, in_shape: Shape) -> int:
        return 3 * self.relu_units(in_shape)

    def describe(self) -> str:
        return f"max tree {self.pick.size} outputs, {self.relu_units(())} relus, depth {self.depth}"


@dataclass(frozen=True, eq=False)
class SparseAffine(Layer):
    """``y = A x + b`` with ``A`` a sparse ``(n_out, n_in)`` matrix; ``exact`` marks the rows
    that float32 execution of the max tree computes without rounding."""

    matrix: sparse.csr_array = field(default=None, repr=False)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    exact: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    kind = "sparse_affine"

    @property
    def n_out(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, flat: np.ndarray, absolute: bool = False) -> np.ndarray:
        m = abs(self.matrix) if absolute else self.matrix
        return np.asarray((m @ flat.T).T)

    def apply_transpose(self, flat: np.ndarray) -> np.ndarray:
        return np.asarray((self.matrix.T @ flat.T).T)

    def row_terms(self) -> np.ndarray:
        """Products summed per row (0 for rows computed exactly)."""
        nnz = np.diff(self.matrix.indptr)
        return np.where(self.exact, 0, nnz)
