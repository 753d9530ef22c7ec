"""Output gates: from an unsafe polytope to a clamp that provably escapes it.

For an unsafe polytope ``P = {y : A y <= b}`` of a case with input box ``X``,
pick an output ``k`` whose coefficient ``a_rk`` is nonzero with one sign in
every row ``r``.  With ``t_r(y) = (b_r - sum_{i != k} a_ri y_i) / a_rk``, row
``r`` is escaped iff ``y_k < t_r`` (``a_rk < 0``) or ``y_k > t_r`` (``a_rk > 0``),
so the gate

* ``a_rk < 0`` ("min"): ``y_k' = min(y_k, max_r t_r - delta + M dist(x))``
* ``a_rk > 0`` ("max"): ``y_k' = max(y_k, min_r t_r + delta - M dist(x))``

moves the output out of ``P`` by ``delta``.  ``dist(x)`` is the scaled L1
distance of ``x`` to ``X``: exactly 0 in float32 inside ``X`` (the box is
rounded outwards, subtraction keeps its sign), so there the gate is the plain
clamp; at ``dist >= SHELL`` the threshold is past every reachable output and
the gate is the identity.

Float32: the gate computes ``t_r - delta`` with one Gemm over float32
constants; ``eps`` bounds its error from the output range
(``gamma_{nnz_r+3} (sum_i |a_ri/a_rk| |y_i| + |b_r/a_rk| + delta)``), ``delta`` is
4x that (at least 4 ulp of the range); ``M = 2 (2R + delta + eps) / SHELL``, a
factor 2 over "past every output" for the rounding of ``dist``.  A gate whose box
holds the whole compile domain has no switch (``dist`` is 0 wherever the network
is specified).  ``gate_proof`` proves the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.errors import ProofFailed
from relugate.compiler.spec import Polytope, Property
from relugate.passes.analysis.steps import float32_box, gamma

SHELL = 1e-3
"""Scaled distance outside a case's box beyond which its gates are switched off."""
TINY = 2.0**-100
"""Absolute slack for float32 underflow in the threshold computation (a kernel that
flushes subnormals to zero errs by up to 2^-126 per operation)."""


@dataclass(frozen=True, eq=False)
class GateSpec:
    """One output gate; JSON-serializable (floats round-trip exactly)."""

    prop: int
    case: int
    poly: int
    lo: np.ndarray  # the case's input box (float64)
    hi: np.ndarray
    k: int
    direction: str  # "min": y_k' = min(y_k, T); "max": y_k' = max(y_k, T)
    A: np.ndarray  # the rows used (m, n_out)
    b: np.ndarray
    delta: float
    eps: float
    M: float
    R: float
    switch: bool = True  # False: the box holds the whole compile domain, the gate is always on

    @property
    def sign(self) -> float:
        """-1 for "min" gates (threshold below t), +1 for "max"."""
        return -1.0 if self.direction == "min" else 1.0

    @property
    def n_out(self) -> int:
        return int(self.A.shape[1])

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact (float64) ``C`` (n_out, m) and ``c`` (m) with ``t_r -/+ delta = y C + c``."""
        ak = self.A[:, self.k]
        C = -(self.A / ak[:, None]).T
        C[self.k] = 0.0
        return C, self.b / ak + self.sign * self.delta

    def constants(self) -> dict[str, np.ndarray]:
        """The float32 constants of the ONNX subgraph."""
        C, c = self.coefficients()
        lo32, hi32 = float32_box(self.lo, self.hi)
        scale = -self.sign * self.M / _widths(self.lo, self.hi)
        m = len(self.b)
        mask = np.full((1, self.n_out), np.inf * -self.sign, dtype=np.float32)
        mask[0, self.k] = 0.0
        return {
            "lo": lo32.astype(np.float32)[None],
            "hi": hi32.astype(np.float32)[None],
            "scale": np.repeat(scale[:, None], m, axis=1).astype(np.float32),
            "C": C.astype(np.float32),
            "c": c.astype(np.float32),
            "mask": mask,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.prop,
            "case": self.case,
            "polytope": self.poly,
            "box": {"lo": self.lo.tolist(), "hi": self.hi.tolist()},
            "k": self.k,
            "direction": self.direction,
            "A": self.A.tolist(),
            "b": self.b.tolist(),
            "delta": self.delta,
            "eps": self.eps,
            "M": self.M,
            "R": self.R,
            "switch": self.switch,
            "formula": self.formula(),
        }

    def formula(self) -> str:
        """Readable form, e.g. ``Y_0 <- min(Y_0, max(Y_1, Y_2) - 2e-05)`` (inside the box)."""
        C, c = self.coefficients()
        ts = [_linear(C[:, r], c[r] - self.sign * self.delta) for r in range(len(self.b))]
        reduce = "max" if self.direction == "min" else "min"
        inner = ts[0] if len(ts) == 1 else f"{reduce}({', '.join(ts)})"
        op = "-" if self.direction == "min" else "+"
        return f"Y_{self.k} <- {self.direction}(Y_{self.k}, {inner} {op} {self.delta:.3g})"


def _linear(coeffs: np.ndarray, const: float) -> str:
    parts = []
    for i, c in enumerate(coeffs):
        if c != 0.0:
            parts.append(f"Y_{i}" if c == 1.0 else f"-Y_{i}" if c == -1.0 else f"{c:.6g}*Y_{i}")
    if const != 0.0 or not parts:
        parts.append(f"{const:.6g}")
    return " + ".join(parts).replace("+ -", "- ")


def _widths(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    w = hi - lo
    return np.where(w > 0, w, 1.0)


def _row_text(a: np.ndarray, b: float) -> str:
    return f"{_linear(a, 0.0) if np.any(a) else '0'} <= {b:.6g}"


def gate_rows(poly: Polytope) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows that matter: all-zero rows ``0 <= b`` are dropped when true; ``None``
    when one is false (the polytope is empty: nothing to gate)."""
    zero = ~np.any(poly.A != 0.0, axis=1)
    if np.any(poly.b[zero] < 0):
        return None
    return poly.A[~zero], poly.b[~zero]


def choose_coordinate(A: np.ndarray, where: str) -> tuple[int, str]:
    """``(k, direction)``: a column nonzero with one sign in every row, negative preferred."""
    if A.shape[0] == 0:
        raise ProofFailed(
            f"no output gate for {where}: the polytope has no constraints, every output is unsafe"
        )
    for wanted, direction in ((-1.0, "min"), (1.0, "max")):
        for k in range(A.shape[1]):
            if np.all(np.sign(A[:, k]) == wanted):
                return k, direction
    rows = "; ".join(_row_text(a, 0.0).replace(" <= 0", " <= b") for a in A[:4])
    raise ProofFailed(
        f"no output gate for {where}: no output has a nonzero coefficient of the same sign "
        f"in every row ({rows}{'; ...' if len(A) > 4 else ''})"
    )


def _threshold_range(
    C: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: bounds of ``y C + c`` over ``lo <= y <= hi``, and ``sum |C| |y| + |c|``."""
    low = np.minimum(C * lo[:, None], C * hi[:, None]).sum(axis=0) + c
    high = np.maximum(C * lo[:, None], C * hi[:, None]).sum(axis=0) + c
    mag = np.abs(C).T @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(c)
    return low, high, mag


def _ulp32(x: float) -> float:
    return float(np.spacing(np.float32(min(abs(x), 3e38))))


def _tolerances(
    A: np.ndarray, b: np.ndarray, k: int, lo: np.ndarray, hi: np.ndarray
) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """``delta, eps, R`` for a gate reading outputs in ``[lo, hi]``, and the exact
    threshold range without delta.

    Row ``r`` is one float32 dot product over its ``nnz_r`` nonzero coefficients
    plus the bias (zero terms add nothing): error ``<= gamma_{nnz_r + 1}`` times the
    magnitude; one more ``u`` for rounding the constants to float32, one for
    computing them in float64."""
    ak = A[:, k]
    C = -(A / ak[:, None]).T
    C[k] = 0.0
    t_lo, t_hi, mag = _threshold_range(C, b / ak, lo, hi)
    g = np.array([gamma(int(np.count_nonzero(C[:, r])) + 3) for r in range(len(b))])
    R = float(max(np.abs(lo).max(), np.abs(hi).max(), np.abs(t_lo).max(), np.abs(t_hi).max()))
    delta = max(4.0 * (float((g * mag).max()) + TINY), 4.0 * _ulp32(R))
    eps = float((g * (mag + delta)).max()) + TINY
    if not delta > eps:  # pragma: no cover - 4 gamma (mag) > gamma (mag + delta) always
        raise ProofFailed("internal: gate margin does not exceed its rounding error")
    return delta, eps, R, t_lo, t_hi


def _make_gate(
    where: tuple[int, int, int],
    box: Box,
    rows: tuple[np.ndarray, np.ndarray],
    k: int,
    direction: str,
    cur: tuple[np.ndarray, np.ndarray],
    switch: bool,
) -> tuple[GateSpec, tuple[np.ndarray, np.ndarray]]:
    A, b = rows
    lo, hi = cur
    delta, eps, R, t_lo, t_hi = _tolerances(A, b, k, lo, hi)
    M = 2.0 * (2.0 * R + delta + eps) / SHELL
    gate = GateSpec(*where, box.lo, box.hi, k, direction, A, b, delta, eps, M, R, switch)
    lo, hi = lo.copy(), hi.copy()
    if direction == "min":  # the gate can lower y_k down to its threshold
        lo[k] = min(lo[k], float(t_lo.max()) - delta - eps)
    else:
        hi[k] = max(hi[k], float(t_hi.min()) + delta + eps)
    return gate, (lo, hi)


def _holds(outer: Box, inner: Box) -> bool:
    return bool(np.all(outer.lo <= inner.lo) and np.all(outer.hi >= inner.hi))


def design_gates(
    props: list[Property],
    gated: list[bool],
    ranges: list[list[tuple[np.ndarray, np.ndarray]]],
    domain: Box | None = None,
) -> list[GateSpec]:
    """Gates for every unsafe polytope of every case of the ``gated`` properties, in order.

    ``ranges[p][c]``: bounds on the (ungated) network's output over case ``c`` of
    property ``p``; their hull, pushed through the gates before each one, sizes
    every gate's ``delta`` and ``M``.  A gate whose box holds the whole compile
    ``domain`` gets no switch: it is on wherever the compiled network is specified
    at all (outside the domain the passes promise nothing), and the input check,
    several elementwise passes over the input, is saved."""
    all_ranges = [r for per_prop in ranges for r in per_prop]
    cur = (
        np.min([r[0] for r in all_ranges], axis=0).astype(np.float64),
        np.max([r[1] for r in all_ranges], axis=0).astype(np.float64),
    )
    gates: list[GateSpec] = []
    for p, prop in enumerate(props):
        if not gated[p]:
            continue
        for c, case in enumerate(prop.cases):
            for j, poly in enumerate(case.unsafe):
                rows = gate_rows(poly)
                if rows is None:
                    continue
                where = f"{prop.source} (case {c + 1}, unsafe polytope {j + 1})"
                k, direction = choose_coordinate(rows[0], where)
                switch = domain is None or not _holds(case.box, domain)
                gate, cur = _make_gate((p, c, j), case.box, rows, k, direction, cur, switch)
                gates.append(gate)
    return gates


def evaluate_gates(gates: list[GateSpec], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The gates' formula in float64 (no rounding of its own), on rows ``x`` (n, n_in) and
    ``y`` (n, n_out)."""
    y = np.array(y, dtype=np.float64)
    for g in gates:
        w = _widths(g.lo, g.hi)
        lo, hi = float32_box(g.lo, g.hi)  # the box as the gate holds it, rounded outwards
        dist = (np.maximum(lo - x, 0) / w + np.maximum(x - hi, 0) / w).sum(axis=1) * g.switch
        C, c = g.coefficients()
        t = y @ C + c
        if g.direction == "min":
            y[:, g.k] = np.minimum(y[:, g.k], t.max(axis=1) + g.M * dist)
        else:
            y[:, g.k] = np.maximum(y[:, g.k], t.min(axis=1) - g.M * dist)
    return y
