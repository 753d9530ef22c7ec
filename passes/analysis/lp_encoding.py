"""(Mixed-integer) linear encoding of the flat step chain on one input box.

Variables are the input of every step ``0..end`` (``layer_vars[k]``), plus
helpers.  Each step becomes linear constraints:

* ``Affine`` (``y = W x + b``): ``y - W x - e = b`` with one slack ``e`` per
  output bounded by ``|e| <= margin(max(|lo|, |hi|))`` (the float32 rounding
  bound of ``steps.Affine.margin``), so every float32 execution of the step is
  a feasible point.  ``W`` is materialized by applying the step to identity
  rows and stored sparse.  A run of consecutive affine steps is composed into
  one (each margin carried through the later ``|W|``, plus the float64
  rounding of the products), which drops the inner variables.
* ``ReluStep`` on ``x in [l, u]``: ``y = x`` if ``l >= 0``, ``y = 0`` if
  ``u <= 0``; otherwise ``y >= 0, y >= x`` and either the big-M pair
  ``y <= x - l (1 - d), y <= u d`` with a binary ``d`` (mode ``"milp"``) or the
  triangle ``y <= u (x - l) / (u - l)`` (mode ``"lp"``; its right-hand side is
  raised by a tiny amount so rounding the slope never cuts a true point).
* ``MaxPoolStep``: per window, only elements that can be the maximum
  (``u_i >= max_j l_j``) take part: ``y >= x_i`` and
  ``y <= x_i + (U - l_i)(1 - d_i)`` with ``sum d_i = 1`` (``U = max u_i``);
  mode ``"lp"`` relaxes ``d`` to ``[0, 1]``.

Every variable is bounded by the given ``Bounds``, which enclose float32
execution, so the feasible set contains every float32 trace from the box: the
encoding is a relaxation of the deployed network.  ``safe_lower_bound`` turns
an LP solver's dual multipliers into a rigorous bound (Neumaier & Shcherbina);
``lp_lower_bound`` and ``solve_milp`` run HiGHS with a time limit.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds as VarBounds
from scipy.optimize import LinearConstraint, OptimizeResult, linprog, milp

from relugate.compiler import kernels
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.steps import U64, Affine, MaxPoolStep, ReluStep, Step

_MATRICES: weakref.WeakKeyDictionary[Affine, sparse.csr_array] = weakref.WeakKeyDictionary()


def affine_matrix(step: Affine) -> sparse.csr_array:
    """``W`` of an affine step as a sparse ``(n_out, n_in)`` matrix (cached per step)."""
    cached = _MATRICES.get(step)
    if cached is not None:
        return cached
    chunk = max(1, int(4e6 // max(step.n_out, 1)))
    blocks = []
    for start in range(0, step.n_in, chunk):
        m = min(chunk, step.n_in - start)
        eye = np.zeros((m, step.n_in))
        eye[np.arange(m), start + np.arange(m)] = 1.0
        blocks.append(sparse.csr_array(step.apply(eye)))  # rows of W^T
    matrix = sparse.csr_array(sparse.vstack(blocks).T)
    _MATRICES[step] = matrix
    return matrix


def pool_windows(step: MaxPoolStep) -> np.ndarray:
    """Flat input indices of each output's window, ``(n_out, k)``; -1 marks padding."""
    lay = step.layer
    idx = np.arange(int(np.prod(step.in_shape)), dtype=np.float64).reshape(1, *step.in_shape)
    padded = kernels._pad(idx, lay.pads, -1.0)
    out = step.out_shape[1:]
    taps = [
        padded[kernels._window(off, lay.dilations, lay.strides, out)].reshape(-1)
        for off in kernels._offsets(lay.kernel)
    ]
    return np.stack(taps, axis=1).astype(np.int64)


@dataclass
class _Rows:
    """Sparse rows accumulated in COO form."""

    r: list[np.ndarray] = field(default_factory=list)
    c: list[np.ndarray] = field(default_factory=list)
    v: list[np.ndarray] = field(default_factory=list)
    rhs: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, rhs: np.ndarray) -> None:
        """Rows numbered ``0..len(rhs)-1`` locally."""
        self.r.append(np.asarray(rows, dtype=np.int64) + self.count)
        self.c.append(np.asarray(cols, dtype=np.int64))
        self.v.append(np.asarray(vals, dtype=np.float64))
        self.rhs.append(np.asarray(rhs, dtype=np.float64).reshape(-1))
        self.count += len(self.rhs[-1])

    def pairs(
        self,
        a: np.ndarray,
        b: np.ndarray,
        ca: float | np.ndarray,
        cb: float | np.ndarray,
        rhs: np.ndarray,
    ) -> None:
        """Rows ``ca * v[a_i] + cb * v[b_i]`` (op) ``rhs_i``."""
        m = len(a)
        vals = np.concatenate([np.broadcast_to(ca, (m,)), np.broadcast_to(cb, (m,))])
        self.add(np.tile(np.arange(m), 2), np.concatenate([a, b]), vals, rhs)

    def matrix(self, n_vars: int) -> tuple[sparse.csr_array, np.ndarray]:
        if not self.r:
            return sparse.csr_array((0, n_vars)), np.zeros(0)
        coo = sparse.coo_array(
            (np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
            shape=(self.count, n_vars),
        )
        return sparse.csr_array(coo), np.concatenate(self.rhs)


@dataclass
class Encoding:
    """``A_eq v = b_eq, A_ub v <= b_ub, lb <= v <= ub``, integrality 1 for binaries."""

    A_eq: sparse.csr_array
    b_eq: np.ndarray
    A_ub: sparse.csr_array
    b_ub: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray
    layer_vars: list[np.ndarray]

    @property
    def n_vars(self) -> int:
        return int(self.lb.size)

    def input_of(self, v: np.ndarray) -> np.ndarray:
        """The network input part of a solution vector."""
        return np.asarray(v, dtype=np.float64)[self.layer_vars[0]]


class _Builder:
    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.kind: list[np.ndarray] = []
        self.n = 0
        self.eq = _Rows()
        self.le = _Rows()

    def new(self, lb: np.ndarray, ub: np.ndarray, integer: bool = False) -> np.ndarray:
        lb, ub = np.asarray(lb, dtype=np.float64).reshape(-1), np.asarray(ub, dtype=np.float64)
        ub = np.maximum(ub.reshape(-1), lb)  # never an empty interval from rounding
        idx = np.arange(self.n, self.n + lb.size)
        self.lb.append(lb)
        self.ub.append(ub)
        self.kind.append(np.full(lb.size, 1 if integer else 0))
        self.n += lb.size
        return idx

    def finish(self, layer_vars: list[np.ndarray]) -> Encoding:
        A_eq, b_eq = self.eq.matrix(self.n)
        A_ub, b_ub = self.le.matrix(self.n)
        cat = np.concatenate
        return Encoding(
            A_eq, b_eq, A_ub, b_ub, cat(self.lb), cat(self.ub), cat(self.kind), layer_vars
        )


def _affine_run(
    run: Sequence[Affine], lo: Sequence[np.ndarray], hi: Sequence[np.ndarray], margins: bool
) -> tuple[sparse.csr_array, np.ndarray, np.ndarray]:
    """A run of affine steps (``lo[j]``, ``hi[j]``: bounds of the input of ``run[j]``) as
    ``y = W x + c + e`` with ``|e| <= r``.

    ``r`` sums each step's float32 margin carried through the later steps
    (``|W_later| m``) and the float64 rounding of forming the products ``W``, ``c``.
    """
    x0_abs = np.maximum(np.abs(lo[0]), np.abs(hi[0]))
    W = sparse.csr_array(sparse.identity(run[0].n_in, format="csr"))
    c, r = np.zeros(run[0].n_in), np.zeros(run[0].n_in)
    for j, step in enumerate(run):
        Wj = affine_matrix(step)
        absWj = abs(Wj)
        r = absWj @ r
        if j:  # float64 rounding of the products below
            r = r + 4 * (step.terms() + 2) * U64 * (absWj @ (abs(W) @ x0_abs + np.abs(c)))
        W = sparse.csr_array(Wj @ W)
        c = Wj @ c + step.bias()
        if margins:
            r = r + step.margin(np.maximum(np.abs(lo[j]), np.abs(hi[j]))[None])[0]
    return W, c, r * (1 + 1e-9)


def _encode_affine(
    bld: _Builder,
    run: Sequence[Affine],
    x: np.ndarray,
    lo: Sequence[np.ndarray],
    hi: Sequence[np.ndarray],
    margins: bool,
) -> np.ndarray:
    """Encode ``len(run)`` consecutive affine steps; ``lo[-1]``, ``hi[-1]`` bound the result."""
    W, c, r = _affine_run(run, lo, hi, margins)
    W = sparse.coo_array(W)
    n_out = len(c)
    y = bld.new(lo[-1], hi[-1])
    rows, cols, vals = [W.row, np.arange(n_out)], [x[W.col], y], [-W.data, np.ones(n_out)]
    if np.any(r > 0):
        e = bld.new(-r, r)
        rows.append(np.arange(n_out))
        cols.append(e)
        vals.append(-np.ones(n_out))
    bld.eq.add(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), c)
    return y


def _encode_relu(
    bld: _Builder,
    x: np.ndarray,
    lo: np.ndarray,
    u: np.ndarray,
    y_lo: np.ndarray,
    y_hi: np.ndarray,
    mode: str,
) -> np.ndarray:
    dead = u <= 0
    y = bld.new(np.where(dead, 0.0, np.maximum(y_lo, 0.0)), np.where(dead, 0.0, y_hi))
    on = np.flatnonzero((lo >= 0) & ~dead)
    bld.eq.pairs(y[on], x[on], 1.0, -1.0, np.zeros(len(on)))
    un = np.flatnonzero((lo < 0) & (u > 0))
    lu, uu = lo[un], u[un]
    bld.le.pairs(x[un], y[un], 1.0, -1.0, np.zeros(len(un)))  # y >= x
    m = len(un)
    if mode == "lp":  # triangle: y <= s (x - l), s = u / (u - l), + rounding allowance
        slope = uu / (uu - lu)
        rhs = -slope * lu + 1e-12 * (uu + slope * np.abs(lu))
        bld.le.pairs(y[un], x[un], 1.0, -slope, rhs)
        return y
    d = bld.new(np.zeros(m), np.ones(m), integer=True)
    r3 = np.repeat(np.arange(m), 3)
    c3 = np.stack([y[un], x[un], d], axis=1).reshape(-1)
    v3 = np.stack([np.ones(m), -np.ones(m), -lu], axis=1).reshape(-1)
    bld.le.add(r3, c3, v3, -lu)  # y - x - l d <= -l
    bld.le.pairs(y[un], d, 1.0, -uu, np.zeros(m))  # y <= u d
    return y


def _encode_pool(
    bld: _Builder,
    step: MaxPoolStep,
    x: np.ndarray,
    lo: np.ndarray,
    u: np.ndarray,
    y_lo: np.ndarray,
    y_hi: np.ndarray,
    mode: str,
) -> np.ndarray:
    win = pool_windows(step)
    valid = win >= 0
    wl = np.where(valid, lo[np.maximum(win, 0)], -np.inf)
    wu = np.where(valid, u[np.maximum(win, 0)], -np.inf)
    floor = wl.max(axis=1)
    cand = valid & (wu >= floor[:, None])
    top = np.where(cand, wu, -np.inf).max(axis=1)
    y = bld.new(np.maximum(y_lo, floor), np.minimum(y_hi, top))
    single = cand.sum(axis=1) == 1
    o1 = np.flatnonzero(single)
    bld.eq.pairs(y[o1], x[win[o1, np.argmax(cand[o1], axis=1)]], 1.0, -1.0, np.zeros(len(o1)))
    o, j = np.nonzero(cand & ~single[:, None])
    xi, big = x[win[o, j]], top[o] - wl[o, j]
    bld.le.pairs(xi, y[o], 1.0, -1.0, np.zeros(len(o)))  # x_i <= y
    d = bld.new(np.zeros(len(o)), np.ones(len(o)), integer=(mode == "milp"))
    m = len(o)
    r3 = np.repeat(np.arange(m), 3)
    c3 = np.stack([y[o], xi, d], axis=1).reshape(-1)
    v3 = np.stack([np.ones(m), -np.ones(m), big], axis=1).reshape(-1)
    bld.le.add(r3, c3, v3, big * (1 + 1e-12))  # y <= x_i + (U - l_i)(1 - d_i)
    groups = np.unique(o, return_inverse=True)[1]
    bld.eq.add(groups, d, np.ones(m), np.ones(int(groups.max()) + 1 if m else 0))
    return y


def encode(
    steps: Sequence[Step],
    bounds: Bounds,
    end: int | None = None,
    box_index: int = 0,
    mode: str = "milp",
    margins: bool = True,
    merge: bool = True,
) -> Encoding:
    """Encode ``steps[:end]`` on box ``box_index`` of ``bounds`` (mode ``"milp"`` or ``"lp"``).

    ``merge`` composes runs of consecutive affine steps into one (their inner
    variables are dropped: ``layer_vars`` holds -1 there).  ``margins=False``
    encodes exact real arithmetic (no float32 rounding) instead.
    """
    end = len(steps) if end is None else end
    if mode not in ("milp", "lp"):
        raise ValueError(f"mode must be 'milp' or 'lp', not {mode!r}")
    lo = [b[box_index].astype(np.float64) for b in bounds.lo]
    hi = [b[box_index].astype(np.float64) for b in bounds.hi]
    bld = _Builder()
    layer_vars = [bld.new(lo[0], hi[0])]
    k = 0
    while k < end:
        step, x = steps[k], layer_vars[-1]
        if isinstance(step, Affine):
            j = k + 1
            while merge and j < end and isinstance(steps[j], Affine):
                j += 1
            run = [s for s in steps[k:j] if isinstance(s, Affine)]
            layer_vars += [np.full(s.n_out, -1) for s in run[:-1]]
            layer_vars.append(_encode_affine(bld, run, x, lo[k : j + 1], hi[k : j + 1], margins))
            k = j
            continue
        if isinstance(step, ReluStep):
            y = _encode_relu(bld, x, lo[k], hi[k], lo[k + 1], hi[k + 1], mode)
        elif isinstance(step, MaxPoolStep):
            y = _encode_pool(bld, step, x, lo[k], hi[k], lo[k + 1], hi[k + 1], mode)
        else:
            raise TypeError(type(step).__name__)
        layer_vars.append(y)
        k += 1
    return bld.finish(layer_vars)


def forward_steps(steps: Sequence[Step], x: np.ndarray) -> list[np.ndarray]:
    """Float64 inputs of every step and the output, for rows ``x`` of shape ``(N, n_in)``."""
    acts = [np.atleast_2d(np.asarray(x, dtype=np.float64))]
    for step in steps:
        h = acts[-1]
        if isinstance(step, Affine):
            acts.append(step.apply(h) + step.bias())
        elif isinstance(step, ReluStep):
            acts.append(np.maximum(h, 0.0))
        else:
            acts.append(step.forward(h))
    return acts


def safe_lower_bound(enc: Encoding, c: np.ndarray, y_ub: np.ndarray, y_eq: np.ndarray) -> float:
    """A rigorous lower bound on ``min c.v`` over the encoding from ANY multipliers.

    Weak duality with box-bounded variables (Neumaier & Shcherbina 2004): for
    ``y_ub <= 0`` and any ``y_eq``, with ``r = c - A_ub^T y_ub - A_eq^T y_eq``,
    every feasible ``v`` has ``c.v = y_ub.A_ub v + y_eq.A_eq v + r.v
    >= b_ub.y_ub + b_eq.y_eq + sum_j min(r_j lb_j, r_j ub_j)``.  The float64
    rounding of evaluating this sum is covered by subtracting a relative slack.
    """
    y_ub = np.minimum(np.nan_to_num(np.asarray(y_ub, dtype=np.float64)), 0.0)
    y_eq = np.nan_to_num(np.asarray(y_eq, dtype=np.float64))
    r = c - enc.A_ub.T @ y_ub - enc.A_eq.T @ y_eq
    with np.errstate(invalid="ignore"):
        terms = np.where(r == 0, 0.0, np.minimum(r * enc.lb, r * enc.ub))
    value = enc.b_ub @ y_ub + enc.b_eq @ y_eq + terms.sum()
    v_abs = np.maximum(np.abs(enc.lb), np.abs(enc.ub))
    col_mag = np.abs(c) + abs(enc.A_ub).T @ np.abs(y_ub) + abs(enc.A_eq).T @ np.abs(y_eq)
    mag = np.abs(enc.b_ub) @ np.abs(y_ub) + np.abs(enc.b_eq) @ np.abs(y_eq)
    mag += np.abs(terms).sum() + col_mag @ v_abs
    n_terms = enc.n_vars + len(enc.b_ub) + len(enc.b_eq) + 16
    return float(value - max(1e-9, 8 * n_terms * U64) * mag)


def _widen(A: sparse.csr_array, n: int) -> sparse.csr_array:
    return sparse.csr_array((A.data, A.indices, A.indptr), shape=(A.shape[0], n))


def with_rows(
    enc: Encoding,
    A: sparse.csr_array,
    b: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    integer: bool,
) -> Encoding:
    """The encoding with ``len(lb)`` new variables appended and rows ``A v <= b`` added
    (``A`` has a column for every old and new variable)."""
    n = enc.n_vars + len(lb)
    return Encoding(
        _widen(enc.A_eq, n),
        enc.b_eq,
        sparse.csr_array(sparse.vstack([_widen(enc.A_ub, n), A])),
        np.concatenate([enc.b_ub, b]),
        np.concatenate([enc.lb, lb]),
        np.concatenate([enc.ub, ub]),
        np.concatenate([enc.integrality, np.full(len(lb), 1 if integer else 0)]),
        enc.layer_vars,
    )


def unit(n: int, i: int, sign: float = 1.0) -> np.ndarray:
    c = np.zeros(n)
    c[i] = sign
    return c


def lp_lower_bound(enc: Encoding, c: np.ndarray, time_limit: float) -> float | None:
    """A rigorous lower bound on ``min c.v`` over the LP (integrality ignored), from
    HiGHS's duals via ``safe_lower_bound``; None when HiGHS did not solve it."""
    has_ub, has_eq = enc.A_ub.shape[0] > 0, enc.A_eq.shape[0] > 0
    res = linprog(
        c,
        A_ub=enc.A_ub if has_ub else None,
        b_ub=enc.b_ub if has_ub else None,
        A_eq=enc.A_eq if has_eq else None,
        b_eq=enc.b_eq if has_eq else None,
        bounds=np.stack([enc.lb, enc.ub], axis=1),
        method="highs",
        options={"time_limit": max(time_limit, 0.01), "presolve": True},
    )
    if res.status != 0:
        return None
    # marginals = d(objective)/d(rhs): <= 0 for "<=" rows of a minimization
    y_ub = res.ineqlin.marginals if has_ub else np.zeros(0)
    y_eq = res.eqlin.marginals if has_eq else np.zeros(0)
    return safe_lower_bound(enc, c, y_ub, y_eq)


def solve_milp(
    enc: Encoding, c: np.ndarray, time_limit: float, first_solution: bool = False
) -> OptimizeResult:
    """HiGHS on ``min c.v``; ``first_solution`` stops at the first feasible point
    (HiGHS option ``mip_max_improving_sols``, passed through scipy verbatim)."""
    cons = []
    if enc.A_eq.shape[0]:
        cons.append(LinearConstraint(enc.A_eq, enc.b_eq, enc.b_eq))
    if enc.A_ub.shape[0]:
        cons.append(LinearConstraint(enc.A_ub, -np.inf, enc.b_ub))
    options: dict[str, float | bool | int] = {"time_limit": max(time_limit, 0.01)}
    if first_solution:
        options["mip_max_improving_sols"] = 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        return milp(
            c,
            integrality=enc.integrality,
            bounds=VarBounds(enc.lb, enc.ub),
            constraints=cons,
            options=options,
        )
