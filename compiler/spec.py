"""Safety properties: the VNN-LIB reader and the ``--input-box`` form.

A VNN-LIB file describes the UNSAFE set.  It is read into a ``Property``: a
list of cases, each an input ``Box`` with the output polytopes (a disjunction)
that are unsafe for inputs in that box.
"""

from __future__ import annotations

import gzip
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from relugate.compiler import sexpr
from relugate.compiler.domain import Box
from relugate.compiler.errors import BadSpec
from relugate.compiler.sexpr import NUMBER, Linear, SExpr, SList, Symbol

MAX_DNF_TERMS = 100_000
"""Most disjuncts the asserts may expand to in disjunctive normal form."""

_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)\Z")
_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})


@dataclass(frozen=True, eq=False)
class Polytope:
    """``{y : A @ y <= b}``; with zero rows it holds every output."""

    A: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        A = np.array(self.A, dtype=np.float64)
        b = np.array(self.b, dtype=np.float64).reshape(-1)
        if A.ndim != 2 or b.shape != (A.shape[0],):
            raise BadSpec(
                f"polytope needs A of shape (m, n) and b of shape (m,): {A.shape}, {b.shape}"
            )
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
            raise BadSpec("polytope coefficients must be finite")
        A.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)

    @property
    def n_outputs(self) -> int:
        return int(self.A.shape[1])

    def contains(self, y: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Per-row membership of ``y`` (shape ``(n, n_outputs)`` or ``(n_outputs,)``)."""
        flat = np.asarray(y, dtype=np.float64).reshape(-1, self.n_outputs)
        return np.all(flat @ self.A.T <= self.b + tol, axis=1)

    def to_json(self) -> dict[str, list[Any]]:
        return {"A": self.A.tolist(), "b": self.b.tolist()}


@dataclass(frozen=True)
class Case:
    """Inputs in ``box`` are unsafe when the output lies in any of ``unsafe``."""

    box: Box
    unsafe: tuple[Polytope, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "unsafe", tuple(self.unsafe))
        if len({p.n_outputs for p in self.unsafe}) > 1:
            raise BadSpec("the unsafe polytopes of one case differ in output size")

    def is_unsafe(self, y: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Per-row: is the output ``y`` in some unsafe polytope?"""
        arr = np.asarray(y, dtype=np.float64)
        result = np.zeros(1 if arr.ndim <= 1 else arr.shape[0], dtype=bool)
        for polytope in self.unsafe:
            result |= polytope.contains(arr, tol)
        return result


@dataclass(frozen=True)
class Property:
    """A safety property: unsafe if ``x`` is in a case's box and ``f(x)`` in its polytopes."""

    cases: tuple[Case, ...]
    n_inputs: int
    n_outputs: int
    source: str = "<string>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(self.cases))
        if not self.cases:
            raise BadSpec(f"{self.source}: property has no cases")
        for case in self.cases:
            if case.box.dim != self.n_inputs:
                raise BadSpec(f"{self.source}: box has {case.box.dim} inputs, not {self.n_inputs}")
            if any(p.n_outputs != self.n_outputs for p in case.unsafe):
                raise BadSpec(f"{self.source}: a polytope does not have {self.n_outputs} outputs")

    def domain(self) -> Box:
        """The smallest box holding every case's box."""
        lo = np.min([case.box.lo for case in self.cases], axis=0)
        hi = np.max([case.box.hi for case in self.cases], axis=0)
        return Box(lo, hi)

    def to_json(self) -> dict[str, Any]:
        cases = [
            {"box": c.box.to_json(), "unsafe": [p.to_json() for p in c.unsafe]} for c in self.cases
        ]
        return {
            "source": self.source,
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
            "cases": cases,
        }


# --- VNN-LIB reader ---------------------------------------------------------

_Var = tuple[str, int]
"""``("X", i)`` or ``("Y", j)``."""


@dataclass(frozen=True, slots=True)
class _Bound:
    """``X_index <= value`` (upper) or ``X_index >= value``."""

    index: int
    upper: bool
    value: float
    expr: SList


@dataclass(frozen=True, slots=True)
class _Row:
    """``sum(c * Y_j) <= rhs``, coefficients sparse as ``(j, c)``."""

    coeffs: tuple[tuple[int, float], ...]
    rhs: float


_Lit = _Bound | _Row
_Dnf = list[tuple[_Lit, ...]]


class _Reader:
    """Reads VNN-LIB commands one by one, then builds the ``Property``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: dict[str, _Var] = {}
        self.decls: dict[_Var, SList] = {}
        self.common: list[_Lit] = []
        self.branches: list[tuple[_Dnf, SList]] = []

    def fail(self, at: SExpr, message: str) -> NoReturn:
        sexpr.fail(self.source, at.line, message, sexpr.render(at))

    # commands

    def command(self, expr: SExpr) -> None:
        if not (isinstance(expr, SList) and expr.items and isinstance(expr.items[0], Symbol)):
            self.fail(expr, "expected a command such as (declare-const ...) or (assert ...)")
        head = expr.items[0].text
        if head == "declare-const":
            self.declare(expr)
        elif head == "assert":
            if len(expr.items) != 2:
                self.fail(expr, "assert takes exactly one formula")
            dnf = self.formula(expr.items[1])
            if len(dnf) == 1:
                self.common.extend(dnf[0])
            else:
                self.branches.append((dnf, expr))
        elif head not in _IGNORED_COMMANDS:
            self.fail(expr, f"unknown command {head!r}")

    def declare(self, expr: SList) -> None:
        _, name_sym, sort_sym = expr.items if len(expr.items) == 3 else (None, None, None)
        if not (isinstance(name_sym, Symbol) and isinstance(sort_sym, Symbol)):
            self.fail(expr, "expected (declare-const NAME Real)")
        name, sort = name_sym.text, sort_sym.text
        match = _VARIABLE.match(name)
        if match is None:
            self.fail(expr, f"unsupported variable name {name!r}: expected X_<i> or Y_<j>")
        if sort != "Real":
            self.fail(expr, f"{name} must have sort Real, not {sort!r}")
        var = (match[1], int(match[2]))
        if var in self.decls:
            self.fail(expr, f"{name} is declared twice (first on line {self.decls[var].line})")
        self.names[name] = var
        self.decls[var] = expr

    # formulas

    def formula(self, expr: SExpr) -> _Dnf:
        if not (isinstance(expr, SList) and expr.items):
            self.fail(expr, "expected a formula: (and ...), (or ...) or a comparison")
        head, args = expr.items[0], expr.items[1:]
        op = head.text if isinstance(head, Symbol) else sexpr.render(head, 40)
        if op == "and":
            return self.conjoin([self.formula(arg) for arg in args], expr)
        if op == "or":
            if not args:
                self.fail(expr, "empty (or) is always false")
            out: _Dnf = []
            for arg in args:
                out.extend(self.formula(arg))
                self.check_size(len(out), expr)
            return out
        if op in _COMPARISONS:
            return [self.comparison(op, args, expr)]
        self.fail(expr, f"unknown operator {op!r} in a formula (expected and, or, <=, >=, <, >, =)")

    def conjoin(self, parts: list[_Dnf], expr: SList) -> _Dnf:
        fixed: list[_Lit] = []
        result: _Dnf = [()]
        for dnf in parts:
            if len(dnf) == 1:
                fixed.extend(dnf[0])
            else:
                result = self.product(result, dnf, expr)
        prefix = tuple(fixed)
        return [prefix + term for term in result] if prefix else result

    def product(self, left: _Dnf, right: _Dnf, expr: SList) -> _Dnf:
        self.check_size(len(left) * len(right), expr)
        return [a + b for a in left for b in right]

    def check_size(self, size: int, expr: SList) -> None:
        if size > MAX_DNF_TERMS:
            self.fail(expr, f"the asserts expand to more than {MAX_DNF_TERMS:,} DNF disjuncts")

    def comparison(self, op: str, args: Sequence[SExpr], expr: SList) -> tuple[_Lit, ...]:
        if len(args) < 2:
            self.fail(expr, f"({op} ...) needs at least two terms")
        terms = [sexpr.linear_term(arg, expr, self.source, self.names) for arg in args]
        lits: list[_Lit] = []
        for lhs, rhs in itertools.pairwise(terms):
            if op in ("<=", "<", "="):
                lits.append(self.literal(lhs.add(rhs, -1.0), expr))
            if op in (">=", ">", "="):
                lits.append(self.literal(rhs.add(lhs, -1.0), expr))
        return tuple(lits)

    def literal(self, lin: Linear, expr: SList) -> _Lit:
        """The atom ``lin <= 0`` as an input bound or an output row."""
        coeffs = {self.names[v]: c for v, c in lin.coeffs.items() if c != 0.0}
        if not all(math.isfinite(c) for c in [*coeffs.values(), lin.const]):
            self.fail(expr, "a coefficient or constant overflows to infinity")
        kinds = {kind for kind, _ in coeffs}
        if not kinds:
            self.fail(expr, "comparison has no variables")
        if len(kinds) > 1:
            self.fail(expr, "comparison mixes input (X) and output (Y) variables")
        if "X" in kinds:
            if len(coeffs) > 1:
                self.fail(
                    expr, "non-box input constraints are unsupported (bound one X_i at a time)"
                )
            ((_, index), coeff), *_ = coeffs.items()
            value = -lin.const / coeff + 0.0
            if not math.isfinite(value):
                self.fail(expr, "input bound overflows to infinity")
            return _Bound(index, coeff > 0, value, expr)
        return _Row(tuple(sorted((j, c) for (_, j), c in coeffs.items())), -lin.const + 0.0)

    # result

    def count(self, kind: str) -> int:
        indices = sorted(i for k, i in self.decls if k == kind)
        for expected, index in enumerate(indices):
            if index != expected:
                self.fail(
                    self.decls[(kind, index)],
                    f"{kind}_{expected} is not declared but "
                    f"{kind}_{index} is: variables must be numbered 0..n-1 without gaps",
                )
        if not indices:
            what = "input" if kind == "X" else "output"
            raise BadSpec(
                f"{self.source}:1: no {what} variables declared: "
                f"expected (declare-const {kind}_0 Real) ..."
            )
        return len(indices)

    def finish(self) -> Property:
        n_in, n_out = self.count("X"), self.count("Y")
        terms: _Dnf = [()]
        for dnf, expr in self.branches:
            terms = self.product(terms, dnf, expr)
        lo, hi = _apply_bounds(np.full(n_in, -np.inf), np.full(n_in, np.inf), self.common)
        base_rows = [lit for lit in self.common if isinstance(lit, _Row)]
        groups: dict[bytes, tuple[Box, list[Polytope]]] = {}
        for number, term in enumerate(terms, start=1):
            t_lo, t_hi = _apply_bounds(lo.copy(), hi.copy(), term)
            where = f" in DNF disjunct {number} of {len(terms)}" if len(terms) > 1 else ""
            self.check_box(t_lo, t_hi, term, where)
            rows = base_rows + [lit for lit in term if isinstance(lit, _Row)]
            key = t_lo.tobytes() + t_hi.tobytes()
            if key not in groups:
                groups[key] = (Box(t_lo, t_hi), [])
            groups[key][1].append(_polytope(rows, n_out))
        cases = tuple(Case(box, tuple(polys)) for box, polys in groups.values())
        return Property(cases, n_in, n_out, self.source)

    def check_box(self, lo: np.ndarray, hi: np.ndarray, term: tuple[_Lit, ...], where: str) -> None:
        missing = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
        if missing.size:
            i = int(missing[0])
            side = "lower" if not np.isfinite(lo[i]) else "upper"
            self.fail(self.decls[("X", i)], f"input X_{i} has no {side} bound{where}")
        empty = np.flatnonzero(lo > hi)
        if empty.size:
            i = int(empty[0])
            culprit = [b for b in [*self.common, *term] if isinstance(b, _Bound) and b.index == i]
            self.fail(
                culprit[-1].expr,
                f"empty input box: X_{i} >= {float(lo[i])} and X_{i} <= {float(hi[i])}{where}",
            )


def _apply_bounds(
    lo: np.ndarray, hi: np.ndarray, lits: Sequence[_Lit]
) -> tuple[np.ndarray, np.ndarray]:
    for lit in lits:
        if isinstance(lit, _Bound):
            if lit.upper:
                hi[lit.index] = min(hi[lit.index], lit.value)
            else:
                lo[lit.index] = max(lo[lit.index], lit.value)
    return lo, hi


def _polytope(rows: Sequence[_Row], n_outputs: int) -> Polytope:
    A = np.zeros((len(rows), n_outputs))
    for r, row in enumerate(rows):
        for j, c in row.coeffs:
            A[r, j] = c
    return Polytope(A, np.array([row.rhs for row in rows], dtype=np.float64))


def parse_vnnlib(text: str, source: str = "<string>") -> Property:
    """Parse VNN-LIB ``text``; ``source`` names it in error messages."""
    reader = _Reader(source)
    for expr in sexpr.parse_sexprs(text, source):
        reader.command(expr)
    return reader.finish()


def read_vnnlib(path: str | Path) -> Property:
    """Read a ``.vnnlib`` (or ``.vnnlib.gz``) file."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise BadSpec(f"{path}: spec file not found") from None
    except (OSError, EOFError) as exc:
        raise BadSpec(f"{path}: cannot read spec file: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data.splitlines()[line - 1].decode("utf-8", "replace").strip()
        raise BadSpec(f"{path}:{line}: spec file is not UTF-8 text: {bad}") from None
    return parse_vnnlib(text, str(path))


# --- boxes from the command line ---------------------------------------------


def box_property(
    lo: Sequence[float],
    hi: Sequence[float],
    unsafe: Sequence[Polytope] = (),
    *,
    n_outputs: int | None = None,
    source: str = "--input-box",
) -> Property:
    """A one-case property; with no ``unsafe`` polytopes it only fixes the domain."""
    if n_outputs is None:
        n_outputs = unsafe[0].n_outputs if unsafe else 0
    box = Box(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
    return Property((Case(box, tuple(unsafe)),), box.dim, n_outputs, source)


def parse_input_box(items: Sequence[str], n_inputs: int | None = None) -> Box:
    """``--input-box`` values: one ``"lo,hi"`` per input, or one for all ``n_inputs``."""
    if isinstance(items, str):
        items = [items]
    if not items:
        raise BadSpec("--input-box needs at least one 'lo,hi' interval")
    pairs = [_parse_interval(k, item) for k, item in enumerate(items, start=1)]
    if n_inputs is not None:
        if n_inputs < 1:
            raise BadSpec(f"--input-box: the model must have at least one input, not {n_inputs}")
        if len(pairs) == 1:
            pairs *= n_inputs
        elif len(pairs) != n_inputs:
            raise BadSpec(
                f"--input-box gives {len(pairs)} intervals but the model has "
                f"{n_inputs} inputs (give one per input, or one for all)"
            )
    return Box(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))


def _parse_interval(k: int, item: str) -> tuple[float, float]:
    where = f"--input-box item {k} {item!r}"
    parts = [part.strip() for part in str(item).split(",")]
    if len(parts) != 2:
        raise BadSpec(f"{where}: expected 'lo,hi'")
    for part in parts:
        if not NUMBER.match(part) or not math.isfinite(float(part)):
            raise BadSpec(f"{where}: {part!r} is not a finite number")
    lo, hi = float(parts[0]) + 0.0, float(parts[1]) + 0.0
    if lo > hi:
        raise BadSpec(f"{where}: lower bound {lo} > upper bound {hi}")
    return lo, hi
