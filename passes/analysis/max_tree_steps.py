"""The analysis chain of a ``MaxTree``: sparse affine steps and ReLU steps only.

The tree's buffer is a DAG (a level reads values from any earlier level); the
analysis chain carries every value still needed across each ReLU step:

* a pair ``(a, b)`` of level ``l`` puts ``d = a - b`` into ReLU step ``l``;
  ``max(a, b) = b + relu(d)`` is formed in the next affine step;
* a value ``v`` that must survive passes as ``relu(v)`` when it is ``>= 0`` for
  every input (the tree's input is, or it is a maximum that includes the
  constant zero or such a value), else as ``relu(v) - relu(-v)``.

Both are identities for every real input, so any sound analysis of the chain
is sound for the tree.  Float32: a row that is one value taken as it is
(coefficient 1) is exact, as the tree computes it (a ``Sub``/``Add`` with the
constant zero is exact too); every other row is bounded by the affine rounding
margin, which covers the tree's ``Sub`` and ``Add`` (see ``steps``).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from relugate.compiler.layers import Relu
from relugate.compiler.max_tree import MaxTree, SparseAffine

Expr = dict[int, float]
"""A buffer value as a linear form in the current vector (empty: the constant 0)."""


def _matrix(rows: list[Expr], n_in: int) -> tuple[sparse.csr_array, np.ndarray]:
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [j for row in rows for j in row]
    v = [x for row in rows for x in row.values()]
    m = sparse.csr_array((v, (r, c)), shape=(len(rows), n_in))
    exact = np.array([list(row.values()) == [1.0] for row in rows], dtype=bool)
    return m, exact


def _neg(e: Expr) -> Expr:
    return {j: -x for j, x in e.items()}


def _sub(a: Expr, b: Expr) -> Expr:
    out = dict(a)
    for j, x in b.items():
        out[j] = out.get(j, 0.0) - x
    return {j: x for j, x in out.items() if x != 0}


def _live_after(tree: MaxTree) -> list[set[int]]:
    """Buffer indices read after level ``l`` (by later pairs or the pick), per level,
    plus the ``b`` side of level ``l``'s own pairs."""
    live: list[set[int]] = []
    need = set(tree.pick.tolist())
    for a, b in reversed(tree.pairs):
        live.append(need | set(b.tolist()))
        need = need | set(a.tolist()) | set(b.tolist())
    return live[::-1]


def _nonneg(tree: MaxTree) -> list[bool]:
    flags = [tree.nonneg or int(s) == tree.n_in for s in tree.src]
    for a, b in tree.pairs:
        flags += [flags[i] or flags[j] for i, j in zip(a.tolist(), b.tolist(), strict=True)]
    return flags


def lower(tree: MaxTree, in_shape: tuple[int, ...]) -> list[tuple[SparseAffine | Relu, tuple]]:
    """(layer, output shape) of every step of the chain, in order."""
    nonneg = _nonneg(tree)
    exprs: dict[int, Expr] = {
        t: ({} if int(s) == tree.n_in else {int(s): 1.0}) for t, s in enumerate(tree.src)
    }
    width = tree.n_in
    out: list[tuple[SparseAffine | Relu, tuple]] = []
    sizes = tree.buffer_sizes()
    for level, ((a, b), live) in enumerate(zip(tree.pairs, _live_after(tree), strict=True)):
        rows = [_sub(exprs[i], exprs[j]) for i, j in zip(a.tolist(), b.tolist(), strict=True)]
        live = {t for t in live if t < sizes[level]}
        slot: dict[int, tuple[int, int | None]] = {}
        for t in sorted(live):
            if not exprs[t]:
                continue
            slot[t] = (len(rows), None if nonneg[t] else len(rows) + 1)
            rows += [exprs[t]] if nonneg[t] else [exprs[t], _neg(exprs[t])]
        out.append(_affine(tree, level, rows, width))
        out.append((Relu(f"{tree.name}/relu{level}"), (len(rows),)))
        nxt: dict[int, Expr] = {t: {} for t in live if not exprs[t]}
        for t, (pos, neg) in slot.items():
            nxt[t] = {pos: 1.0} if neg is None else {pos: 1.0, neg: -1.0}
        for p, j in enumerate(b.tolist()):
            nxt[sizes[level] + p] = {**nxt[j], p: 1.0}
        exprs, width = nxt, len(rows)
    final = [exprs[int(t)] for t in tree.pick]
    layer, _ = _affine(tree, tree.depth, final, width)
    out.append((layer, tree.out))
    return out


def _affine(tree: MaxTree, level: int, rows: list[Expr], width: int) -> tuple[SparseAffine, tuple]:
    matrix, exact = _matrix(rows, width)
    layer = SparseAffine(
        f"{tree.name}/lin{level}", matrix=matrix, bias=np.zeros(len(rows)), exact=exact
    )
    return layer, (len(rows),)


def step_count(tree: MaxTree) -> int:
    return 2 * tree.depth + 1
