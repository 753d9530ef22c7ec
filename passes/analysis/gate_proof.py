"""The z3 proof that output gates make every case of every property safe.

For one case (input box ``X``, unsafe polytopes ``P_j``), over the REALS:
for every output ``y`` in the network's output range on ``X`` (and, for a case
whose property was proved on the ungated network, ``y`` outside every
``P_j``), every rounding error ``|e| <= eps`` of each gate's threshold, the
gates applied in order leave ``y`` outside every ``P_j``.  The negation is
asked; ``unsat`` is the proof.

What a gate does on ``X`` depends on where its own box lies:

* ``on``: its box holds ``X``: ``dist(x) = 0`` exactly, the plain clamp (a gate
  without a switch, whose box holds the whole domain, is on everywhere);
* ``off``: its box is at scaled distance ``>= SHELL`` from ``X``: the
  threshold ``T + M dist`` is past every reachable output (``M`` has a factor 2
  of slack over float32 rounding of ``dist``), the identity;
* ``partial``: otherwise ``dist(x) >= 0`` is unknown: the threshold is ``T + s``
  (``T - s`` for "max" gates) with a free ``s >= 0`` (float32 addition is monotone).

Proofs are cached per formula (its SMT-LIB text).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import z3

from relugate.compiler.domain import Box
from relugate.compiler.spec import Case
from relugate.passes.analysis.gate_design import SHELL, GateSpec, _widths
from relugate.passes.analysis.steps import float32_box

Z3_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class CaseProof:
    prop: int
    case: int
    status: str  # z3's answer to "some gated output is unsafe": unsat, sat, unknown, trivial
    millis: float
    modes: tuple[str, ...]
    premise: bool  # outputs assumed outside the unsafe set (proved on the ungated network)
    formula_sha256: str = ""
    counterexample: tuple[float, ...] | None = None

    @property
    def proved(self) -> bool:
        return self.status in ("unsat", "trivial")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "property": self.prop,
            "case": self.case,
            "status": self.status,
            "millis": round(self.millis, 2),
            "modes": list(self.modes),
            "premise_safe": self.premise,
            "formula_sha256": self.formula_sha256,
        }
        if self.counterexample is not None:
            data["counterexample_y"] = list(self.counterexample)
        return data


def mode(gate: GateSpec, box: Box) -> str:
    """How ``gate`` acts on inputs in ``box``: on, off or partial."""
    if not gate.switch:
        return "on"
    lo32, hi32 = float32_box(gate.lo, gate.hi)
    if np.all(lo32 <= box.lo) and np.all(hi32 >= box.hi):
        return "on"
    gap = np.maximum(0.0, np.maximum(lo32 - box.hi, box.lo - hi32)) / _widths(gate.lo, gate.hi)
    return "off" if float(gap.sum()) >= SHELL * (1 + 1e-9) else "partial"


def _q(x: float) -> z3.ArithRef:
    f = Fraction(float(x))
    return z3.RealVal(f"{f.numerator}/{f.denominator}")


def _dot(coeffs: np.ndarray, ys: Sequence[z3.ArithRef]) -> z3.ArithRef:
    terms = [_q(c) * y for c, y in zip(coeffs, ys, strict=True) if c != 0.0]
    return z3.Sum(terms) if terms else z3.RealVal(0)


def _in_polytope(A: np.ndarray, b: np.ndarray, ys: Sequence[z3.ArithRef]) -> z3.BoolRef:
    return z3.And(*[_dot(a, ys) <= _q(r) for a, r in zip(A, b, strict=True)], z3.BoolVal(True))


def _apply(
    solver: z3.Solver, g: int, gate: GateSpec, how: str, ys: list[z3.ArithRef]
) -> list[z3.ArithRef]:
    """Constrain fresh variables to the gate's output; return the new output vector."""
    ak = [Fraction(float(a)) for a in gate.A[:, gate.k]]
    values = []
    for r, (a, b) in enumerate(zip(gate.A, gate.b, strict=True)):
        others = [0.0 if i == gate.k else float(v) for i, v in enumerate(a)]
        e = z3.Real(f"e{g}_{r}")
        solver.add(e >= -_q(gate.eps), e <= _q(gate.eps))
        t = (_q(b) - _dot(np.array(others), ys)) / z3.RealVal(str(ak[r]))
        values.append(t + gate.sign * _q(gate.delta) + e)
    T = z3.Real(f"T{g}")
    if gate.direction == "min":
        solver.add(*[v <= T for v in values], z3.Or(*[v == T for v in values]))
    else:
        solver.add(*[v >= T for v in values], z3.Or(*[v == T for v in values]))
    if how == "partial":
        s = z3.Real(f"s{g}")
        solver.add(s >= 0)
        T = T + s if gate.direction == "min" else T - s
    out = z3.Real(f"y{g}_{gate.k}")
    cur = ys[gate.k]
    keep = cur <= T if gate.direction == "min" else cur >= T
    solver.add(out == z3.If(keep, cur, T))
    return [out if i == gate.k else y for i, y in enumerate(ys)]


def case_formula(
    gates: Sequence[GateSpec],
    modes: Sequence[str],
    case: Case,
    y_range: tuple[np.ndarray, np.ndarray],
    premise: bool,
) -> tuple[z3.Solver, list[z3.ArithRef]]:
    """A solver holding the negated claim for one case, and the network output variables."""
    solver = z3.Solver()
    lo, hi = y_range
    ys: list[z3.ArithRef] = [z3.Real(f"y{i}") for i in range(len(lo))]
    for y, a, b in zip(ys, lo, hi, strict=True):
        solver.add(y >= _q(a), y <= _q(b))
    if premise:
        solver.add(*[z3.Not(_in_polytope(p.A, p.b, ys)) for p in case.unsafe])
    cur = ys
    for g, (gate, how) in enumerate(zip(gates, modes, strict=True)):
        if how != "off":
            cur = _apply(solver, g, gate, how, cur)
    solver.add(z3.Or(*[_in_polytope(p.A, p.b, cur) for p in case.unsafe], z3.BoolVal(False)))
    return solver, ys


_CACHE: dict[str, tuple[str, tuple[float, ...] | None]] = {}


def _solve(solver: z3.Solver, ys: list[z3.ArithRef]) -> tuple[str, tuple[float, ...] | None, str]:
    text = solver.to_smt2()
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _CACHE:
        solver.set("timeout", Z3_TIMEOUT_MS)
        status = solver.check()
        witness = None
        if status == z3.sat:
            model = solver.model()
            witness = tuple(_as_float(model.eval(y, model_completion=True)) for y in ys)
        _CACHE[key] = (str(status), witness)
    status, witness = _CACHE[key]
    return status, witness, key


def _as_float(value: z3.ExprRef) -> float:
    if isinstance(value, z3.RatNumRef):
        return float(value.numerator_as_long()) / float(value.denominator_as_long())
    return float(value.as_decimal(20).rstrip("?")) if hasattr(value, "as_decimal") else float("nan")


def prove_case(
    gates: Sequence[GateSpec],
    where: tuple[int, int],
    case: Case,
    y_range: tuple[np.ndarray, np.ndarray],
    premise: bool,
) -> CaseProof:
    """Prove one case; ``premise``: the ungated outputs are known to be safe on it."""
    start = time.perf_counter()
    modes = tuple(mode(g, case.box) for g in gates)
    if premise and all(m == "off" for m in modes):
        millis = (time.perf_counter() - start) * 1000
        return CaseProof(*where, "trivial", millis, modes, premise)
    solver, ys = case_formula(gates, modes, case, y_range, premise)
    status, witness, key = _solve(solver, ys)
    millis = (time.perf_counter() - start) * 1000
    return CaseProof(*where, status, millis, modes, premise, key, witness)
