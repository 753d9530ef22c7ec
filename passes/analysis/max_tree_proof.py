"""z3 proofs of the identities ``MaxTree`` relies on, once per size.

* ``tree_proof(k)``: the balanced tree of ``max(a, b) = b + relu(a - b)`` over
  ``k`` reals (pairs taken left to right, an odd one passed up) equals their
  maximum;
* ``relu_proof(k)``: ``max_i relu(x_i) = max(0, x_1, ..., x_k)`` for ``k`` reals
  (a ReLU in front of a pool joins the window as the constant zero).

Real arithmetic; float32 rounding is outside these proofs (the numeric tests
against onnxruntime cover it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import z3


@dataclass(frozen=True)
class Proof:
    claim: str
    equivalent: bool
    status: str
    millis: float

    def justification(self) -> str:
        return f"z3: {self.claim}, {self.status} in {self.millis:.0f} ms"


def _relu(x: z3.ArithRef) -> z3.ArithRef:
    return z3.If(x > 0, x, z3.RealVal(0))


def _is_max(solver: z3.Solver, top: z3.ArithRef, xs: list[z3.ArithRef]) -> None:
    solver.add(*(top >= x for x in xs), z3.Or(*(top == x for x in xs)))


def _check(claim: str, solver: z3.Solver, start: float) -> Proof:
    status = solver.check()
    millis = (time.perf_counter() - start) * 1000
    return Proof(claim, status == z3.unsat, str(status), millis)


def tree_value(xs: list[z3.ArithRef]) -> z3.ArithRef:
    """The tree as ``MaxTree`` builds it (``build_tree``)."""
    level = list(xs)
    while len(level) > 1:
        nxt = [level[p + 1] + _relu(level[p] - level[p + 1]) for p in range(0, len(level) - 1, 2)]
        level = nxt + level[len(level) - len(level) % 2 :]
    return level[0]


@cache
def tree_proof(k: int, timeout_ms: int = 60_000) -> Proof:
    start = time.perf_counter()
    xs = [z3.Real(f"x{i}") for i in range(k)]
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    top = z3.Real("max")
    _is_max(solver, top, xs)
    solver.add(tree_value(xs) != top)
    return _check(f"tree b + relu(a - b) over {k} reals == their max", solver, start)


@cache
def relu_proof(k: int, timeout_ms: int = 60_000) -> Proof:
    start = time.perf_counter()
    xs = [z3.Real(f"x{i}") for i in range(k)]
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    left, right = z3.Real("left"), z3.Real("right")
    _is_max(solver, left, [_relu(x) for x in xs])
    _is_max(solver, right, [z3.RealVal(0), *xs])
    solver.add(left != right)
    return _check(f"max of relu over {k} reals == max(0, those reals)", solver, start)
