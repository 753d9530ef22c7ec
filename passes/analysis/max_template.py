"""The per-window max tree as integer matrices, and its z3 proof.

A window of ``k`` values ``a`` becomes ``out = W_L relu(... relu(W_1 a))``:
each level pairs the values left to right and writes, per pair ``(a, b)``,

* ``signed`` form: ``[a - b, b, -b]``, recombined as
  ``relu(a - b) + relu(b) - relu(-b) = max(a, b)`` (an unpaired ``x`` passes
  as ``[x, -x]``); exact for every real input;
* ``nonneg`` form: ``[a - b, b]``, recombined as ``relu(a - b) + relu(b)``
  (an unpaired ``x`` as ``[x]``); exact when every input is ``>= 0``.

The recombination of one level is folded into the next level's matrix, so
the tree is ``ceil(log2 k)`` ReLU levels and ``ceil(log2 k) + 1`` matrices.
``prove`` checks with z3 over the reals that the tree equals ``max(a)``
(``a >= 0`` assumed in the nonneg form); ``proof`` caches it per ``(k, form)``.
Float32 rounding is outside this proof (the pass's numeric tests cover it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import numpy as np
import z3

FORMS = ("signed", "nonneg")


@dataclass(frozen=True, eq=False)
class Template:
    """``matrices[0]`` reads the ``k`` window values; a ReLU sits between consecutive ones."""

    k: int
    form: str
    matrices: tuple[np.ndarray, ...]

    @property
    def depth(self) -> int:
        return len(self.matrices) - 1

    def relus(self) -> int:
        """ReLU units per window."""
        return sum(int(m.shape[0]) for m in self.matrices[:-1])

    def evaluate(self, a: np.ndarray) -> np.ndarray:
        """The tree on rows ``a`` of shape ``(n, k)`` (float64), for tests."""
        h = np.asarray(a, dtype=np.float64).T
        for m in self.matrices[:-1]:
            h = np.maximum(m @ h, 0.0)
        return (self.matrices[-1] @ h)[0]


def _level(n: int, form: str) -> tuple[np.ndarray, np.ndarray]:
    """Pairing matrix ``P`` (rows: ReLU inputs) and recombination ``R`` (rows: new values)."""
    p_rows: list[np.ndarray] = []
    r_rows: list[list[tuple[int, float]]] = []
    eye = np.eye(n)
    for i in range(0, n - 1, 2):
        a, b = eye[i], eye[i + 1]
        start = len(p_rows)
        if form == "signed":
            p_rows += [a - b, b, -b]
            r_rows.append([(start, 1.0), (start + 1, 1.0), (start + 2, -1.0)])
        else:
            p_rows += [a - b, b]
            r_rows.append([(start, 1.0), (start + 1, 1.0)])
    if n % 2:
        x, start = eye[n - 1], len(p_rows)
        p_rows += [x, -x] if form == "signed" else [x]
        r_rows.append([(start, 1.0), (start + 1, -1.0)] if form == "signed" else [(start, 1.0)])
    r = np.zeros((len(r_rows), len(p_rows)))
    for row, terms in enumerate(r_rows):
        for col, coef in terms:
            r[row, col] = coef
    return np.stack(p_rows), r


def build(k: int, form: str) -> Template:
    """The balanced tree for a window of ``k`` values."""
    if k < 1 or form not in FORMS:
        raise ValueError(f"no max template for k={k}, form={form!r}")
    combine = np.eye(k)  # current values as rows over the previous level's outputs
    matrices: list[np.ndarray] = []
    n = k
    while n > 1:
        p, r = _level(n, form)
        matrices.append(p @ combine)
        combine, n = r, r.shape[0]
    matrices.append(combine)
    return Template(k, form, tuple(matrices))


@dataclass(frozen=True)
class Proof:
    k: int
    form: str
    equivalent: bool
    status: str  # z3's answer to "tree != max": unsat, sat or unknown
    millis: float
    counterexample: tuple[float, ...] | None = None

    def justification(self) -> str:
        assume = " >= 0" if self.form == "nonneg" else ""
        return (
            f"z3: tree({self.k}, {self.form}) == max over {self.k} reals{assume}, "
            f"{self.status} in {self.millis:.0f} ms"
        )


def _linear(row: np.ndarray, terms: list[z3.ArithRef]) -> z3.ArithRef:
    parts = [int(c) * t for c, t in zip(row, terms, strict=True) if c != 0]
    return z3.Sum(parts) if parts else z3.RealVal(0)


def prove(template: Template, timeout_ms: int = 60_000) -> Proof:
    """Ask z3 whether some real window makes the tree differ from the max."""
    for m in template.matrices:
        if not np.array_equal(m, np.round(m)):
            raise ValueError("max templates have integer matrices")
    start = time.perf_counter()
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    a = [z3.Real(f"a{i}") for i in range(template.k)]
    if template.form == "nonneg":
        solver.add(*(x >= 0 for x in a))
    h: list[z3.ArithRef] = list(a)
    for j, m in enumerate(template.matrices[:-1]):
        nxt = [z3.Real(f"h{j}_{i}") for i in range(m.shape[0])]
        for var, row in zip(nxt, m, strict=True):
            pre = _linear(row, h)
            solver.add(var == z3.If(pre > 0, pre, 0))
        h = nxt
    out = _linear(template.matrices[-1][0], h)
    top = z3.Real("max")
    solver.add(*(top >= x for x in a), z3.Or(*(top == x for x in a)))
    solver.add(out != top)
    status = solver.check()
    millis = (time.perf_counter() - start) * 1000
    witness = None
    if status == z3.sat:
        model = solver.model()
        witness = tuple(_as_float(model.eval(x, model_completion=True)) for x in a)
    return Proof(template.k, template.form, status == z3.unsat, str(status), millis, witness)


def _as_float(value: z3.ExprRef) -> float:
    assert isinstance(value, z3.RatNumRef)
    return float(value.numerator_as_long()) / float(value.denominator_as_long())


@cache
def proof(k: int, form: str) -> Proof:
    """The proof of ``build(k, form)``, computed once per process."""
    return prove(build(k, form))
