"""Branch and bound by ReLU splitting, for inputs too wide to split (beta-CROWN style).

A domain is the input box plus a sign assumption on some unstable ReLUs
(input >= 0 or <= 0).  Its bound on the unsafe polytope's rows is CROWN
with the root's intermediate bounds, clamped by the assumptions (an active
split makes the ReLU the identity, an inactive one makes it zero), and the
assumptions themselves entered as Lagrangian terms whose multipliers (beta)
are optimized together with the lower slopes (alpha) by projected Adam.
Every alpha in [0, 1] and beta >= 0 gives a sound bound.

A domain is closed when some row's lower bound exceeds its threshold.  Open
domains have the input that minimizes their bound checked as a
counterexample, then split on the unstable ReLU with the largest BaBSR-style
score: the upper relaxation's intercept weighted by how much the bound
leans on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from relugate.compiler.spec import Polytope
from relugate.passes.analysis.alpha import (
    Evaluation,
    _fixed,
    _initial_alphas,
    evaluate,
    optimized_spec_bounds,
)
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds, known_of, spec_lower_bounds
from relugate.passes.analysis.steps import Affine, ReluStep, Step

Probe = Callable[[np.ndarray], np.ndarray | None]
"""Tries candidate inputs (rows); returns a confirmed counterexample or None."""


@dataclass
class Domains:
    """A batch of domains: per ReLU step ``j``, the sign assumed for each neuron (D, n)
    and the bounds proved for its input on each domain; ``fresh``: the shallowest
    ReLU step whose bounds are not yet final (deeper layers are re-bounded)."""

    signs: dict[int, np.ndarray]
    lo: dict[int, np.ndarray]
    hi: dict[int, np.ndarray]
    fresh: int = 0

    @property
    def count(self) -> int:
        return int(next(iter(self.signs.values())).shape[0])

    def take(self, index: np.ndarray) -> Domains:
        return Domains(
            {j: s[index] for j, s in self.signs.items()},
            {j: a[index] for j, a in self.lo.items()},
            {j: a[index] for j, a in self.hi.items()},
            self.fresh,
        )


def root_domain(steps: Sequence[Step], root: Bounds) -> Domains:
    relus = [j for j, s in enumerate(steps) if isinstance(s, ReluStep)]
    return Domains(
        {j: np.zeros(root.lo[j].shape, np.int8) for j in relus},
        {j: root.lo[j] for j in relus},
        {j: root.hi[j] for j in relus},
        len(steps),
    )


LEAF_ITERATIONS = 300
"""Adam steps on a domain where every ReLU is fixed, before it counts as undecided."""
MAX_ROWS = 48
"""Per layer and batch, the neurons whose bounds a branch re-derives (largest area first)."""


def domain_bounds(steps: Sequence[Step], root: Bounds, domains: Domains) -> Bounds:
    """CROWN bounds on each domain: inherited bounds reused up to the fresh split,
    the assumed signs applied there, every deeper layer bounded again."""
    d = domains.count
    lo, hi = np.repeat(root.lo[0], d, axis=0), np.repeat(root.hi[0], d, axis=0)
    known = {j: (domains.lo[j], domains.hi[j]) for j in domains.lo}
    return crown_bounds(
        steps,
        lo,
        hi,
        known=known,
        signs=domains.signs,
        reuse_until=domains.fresh,
        max_rows=MAX_ROWS,
    )


def root_bounds(
    steps: Sequence[Step], lo: np.ndarray, hi: np.ndarray, iterations: int = 30
) -> Bounds:
    """CROWN bounds on one box, then each ReLU layer's unstable inputs tightened in
    turn by optimized lower slopes (alpha-CROWN on intermediate bounds)."""
    bounds = crown_bounds(steps, lo, hi)
    for k, step in enumerate(steps):
        if not isinstance(step, ReluStep) or not _relaxed_before(steps, k):
            continue
        bounds = crown_bounds(steps, lo, hi, known=known_of(bounds))
        rows = np.flatnonzero(((bounds.lo[k] < 0) & (bounds.hi[k] > 0)).any(axis=0))
        if not rows.size:
            continue
        pick = np.eye(step.n)[rows]
        prefix = Bounds(bounds.lo[: k + 1], bounds.hi[: k + 1], bounds.method)
        best, _ = optimized_spec_bounds(
            steps[:k], prefix, np.concatenate([pick, -pick]), iterations=iterations
        )
        bounds.lo[k][:, rows] = np.maximum(bounds.lo[k][:, rows], best[:, : rows.size])
        bounds.hi[k][:, rows] = np.minimum(bounds.hi[k][:, rows], -best[:, rows.size :])
    return crown_bounds(steps, lo, hi, known=known_of(bounds))


def _relaxed_before(steps: Sequence[Step], k: int) -> bool:
    return any(isinstance(s, ReluStep) for s in steps[:k])


@dataclass
class DomainBound:
    slack: np.ndarray  # best row's lower bound minus threshold, per domain (D,)
    row: np.ndarray  # that row (D,)
    evaluation: Evaluation  # of the last iterate (its coefficients pick the split)


class _Adam:
    def __init__(self, lr: float) -> None:
        self.lr, self.m, self.v, self.t = lr, {}, {}, 0  # type: ignore[var-annotated]

    def ascend(self, params: dict[int, np.ndarray], grads: dict[int, np.ndarray]) -> None:
        self.t += 1
        for j, g in grads.items():
            m = self.m[j] = 0.9 * self.m.get(j, 0.0) + 0.1 * g
            v = self.v[j] = 0.999 * self.v.get(j, 0.0) + 0.001 * g * g
            m_hat, v_hat = m / (1 - 0.9**self.t), v / (1 - 0.999**self.t)
            params[j] = params[j] + self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def bound_domains(
    steps: Sequence[Step], bounds: Bounds, domains: Domains, poly: Polytope, iterations: int = 20
) -> DomainBound:
    """Optimized (alpha, beta) lower bounds of the polytope's rows on every domain."""
    C = np.broadcast_to(poly.A, (domains.count, *poly.A.shape))
    alphas = _initial_alphas(steps, bounds, C.shape[1])
    betas = {j: np.zeros(alphas[j].shape) for j in domains.signs}
    fixed = _fixed(steps, bounds)
    sign_f = {j: s.astype(np.float64) for j, s in domains.signs.items()}
    alpha_opt, beta_opt = _Adam(0.1), _Adam(0.05)
    best = np.full(C.shape[:2], -np.inf)
    ev = evaluate(steps, bounds, C, alphas, fixed, betas, sign_f)
    for _ in range(iterations):
        best = np.maximum(best, ev.value - poly.b)
        if (best > 0).any(axis=1).all():
            break
        alpha_opt.ascend(alphas, ev.alpha_grads)
        beta_opt.ascend(betas, ev.beta_grads)
        for j in alphas:
            alphas[j] = np.clip(alphas[j], 0.0, 1.0)
        for j in betas:
            betas[j] = np.maximum(betas[j], 0.0)
        ev = evaluate(steps, bounds, C, alphas, fixed, betas, sign_f)
    best = np.maximum(best, ev.value - poly.b)
    row = best.argmax(axis=1)
    return DomainBound(best[np.arange(len(row)), row], row, ev)


def split_scores(bounds: Bounds, domains: Domains, result: DomainBound) -> dict[int, np.ndarray]:
    """Per ReLU step (D, n): how much the bound's best row leans on the neuron's upper
    relaxation intercept -u l / (u - l); zero for stable or already split neurons."""
    rows = np.arange(domains.count)
    scores = {}
    for j, s in domains.signs.items():
        lo, hi = bounds.lo[j], bounds.hi[j]
        unstable = (lo < 0) & (hi > 0) & (s == 0)
        icpt = np.where(unstable, -hi * lo / np.where(unstable, hi - lo, 1.0), 0.0)
        lam = result.evaluation.relu_lams[j][rows, result.row]
        scores[j] = np.where(unstable, np.abs(lam) * icpt + 1e-12, 0.0)
    return scores


def filtered_choice(
    steps: Sequence[Step],
    bounds: Bounds,
    scores: dict[int, np.ndarray],
    poly: Polytope,
    candidates: int = 4,
) -> np.ndarray:
    """Filtered smart branching: of each domain's top-scored neurons, the one whose
    two children have the best worse bound (plain CROWN, intermediate bounds kept).
    Returns flat neuron indices over the concatenated ReLU layers."""
    keys = list(scores)
    flat = np.concatenate([scores[j] for j in keys], axis=1)
    offsets = np.cumsum([0] + [scores[j].shape[1] for j in keys])
    top = np.argsort(-flat, axis=1)[:, :candidates]
    rows = np.arange(len(flat))
    best_value = np.full(len(flat), -np.inf)
    best = top[:, 0].copy()
    for c in range(top.shape[1]):
        choice = top[:, c]
        valid = flat[rows, choice] > 0
        worse = np.minimum(
            *(_child_bound(steps, bounds, keys, offsets, choice, s, poly) for s in (1, -1))
        )
        better = valid & (worse > best_value)
        best = np.where(better, choice, best)
        best_value = np.where(better, worse, best_value)
    return best


def _child_bound(
    steps: Sequence[Step],
    bounds: Bounds,
    keys: list[int],
    offsets: np.ndarray,
    choice: np.ndarray,
    sign: int,
    poly: Polytope,
) -> np.ndarray:
    lo, hi = list(bounds.lo), list(bounds.hi)
    layer = np.searchsorted(offsets, choice, side="right") - 1
    for li, j in enumerate(keys):
        pick = np.flatnonzero(layer == li)
        if not pick.size:
            continue
        neuron = choice[pick] - offsets[li]
        if sign > 0:
            lo[j] = lo[j].copy()
            lo[j][pick, neuron] = np.maximum(lo[j][pick, neuron], 0.0)
        else:
            hi[j] = hi[j].copy()
            hi[j][pick, neuron] = np.minimum(hi[j][pick, neuron], 0.0)
            hi[j + 1] = hi[j + 1].copy()
            hi[j + 1][pick, neuron] = 0.0
        lo[j + 1] = np.maximum(lo[j], 0.0) if sign > 0 else lo[j + 1]
    lb, _ = spec_lower_bounds(steps, Bounds(lo, hi, bounds.method), poly.A)
    return (lb - poly.b).max(axis=1)


def branch(
    domains: Domains, bounds: Bounds, scores: dict[int, np.ndarray], choice: np.ndarray
) -> tuple[list[Domains], np.ndarray]:
    """Two children per domain, splitting its highest-score neuron, grouped by the
    ReLU step of that neuron (so each group re-bounds only deeper layers); and a
    mask of the domains that had nothing left to split."""
    keys = list(domains.signs)
    flat = np.concatenate([scores[j] for j in keys], axis=1)
    splittable = flat.max(axis=1) > 0
    offsets = np.cumsum([0] + [scores[j].shape[1] for j in keys])
    layer = np.searchsorted(offsets, choice, side="right") - 1
    groups = []
    for li, j in enumerate(keys):
        pick = np.flatnonzero(splittable & (layer == li))
        if not pick.size:
            continue
        parent = Domains(
            {i: s[pick] for i, s in domains.signs.items()},
            {i: bounds.lo[i][pick] for i in keys},
            {i: bounds.hi[i][pick] for i in keys},
            j,
        )
        neuron = choice[pick] - offsets[li]
        rows = np.arange(pick.size)
        for sign in (1, -1):
            child = parent.take(rows)
            child.signs = {i: s.copy() for i, s in parent.signs.items()}
            child.signs[j][rows, neuron] = sign
            groups.append(child)
    return groups, ~splittable


def minimizers(bounds: Bounds, result: DomainBound) -> np.ndarray:
    """Per domain, the input corner that minimizes its best row's linear lower bound."""
    rows = np.arange(len(result.row))
    coeffs = result.evaluation.coeffs[rows, result.row]
    return np.where(coeffs > 0, bounds.lo[0], bounds.hi[0])


@dataclass
class ReluSearchResult:
    status: str  # "holds", "violated" or "unknown"
    x: np.ndarray | None
    domains: int
    seconds: float


def relu_split(
    steps: Sequence[Step],
    root: Bounds,
    poly: Polytope,
    probe: Probe,
    deadline: float,
    batch: int = 64,
    max_domains: int = 200_000,
) -> ReluSearchResult:
    """Decide whether some input of the root box reaches ``poly``, until ``deadline``."""
    started = time.monotonic()
    queue = [root_domain(steps, root)]
    processed = 0
    stuck = False
    while queue:
        if time.monotonic() > deadline or sum(q.count for q in queue) > max_domains:
            return ReluSearchResult("unknown", None, processed, time.monotonic() - started)
        work = _pop(queue, batch)
        processed += work.count
        bounds = domain_bounds(steps, root, work)
        result = bound_domains(steps, bounds, work, poly)
        open_ = result.slack <= 0
        if not open_.any():
            continue
        work = work.take(np.flatnonzero(open_))
        result = _select(result, open_)
        bounds = bounds.select(open_)
        witness = probe(minimizers(bounds, result))
        if witness is not None:
            return ReluSearchResult("violated", witness, processed, time.monotonic() - started)
        scores = split_scores(bounds, work, result)
        choice = filtered_choice(steps, bounds, scores, poly)
        children, leaves = branch(work, bounds, scores, choice)
        for d in map(int, np.flatnonzero(leaves)):
            witness = _leaf_probe(steps, bounds, d, poly, probe)
            if witness is not None:
                return ReluSearchResult("violated", witness, processed, time.monotonic() - started)
            stuck = stuck or not _leaf_proved(steps, bounds, work, d, poly)
        queue.extend(children)
    status = "unknown" if stuck else "holds"
    return ReluSearchResult(status, None, processed, time.monotonic() - started)


def _pop(queue: list[Domains], batch: int) -> Domains:
    """Up to ``batch`` domains from the top of the stack (last in, first out), merged
    into one batch that re-bounds from the shallowest fresh split among them."""
    parts: list[Domains] = []
    need = batch
    while queue and need > 0:
        top = queue.pop()
        if top.count > need:
            queue.append(top.take(np.arange(top.count - need)))
            top = top.take(np.arange(top.count - need, top.count))
        parts.append(top)
        need -= top.count
    if len(parts) == 1:
        return parts[0]
    keys = list(parts[0].signs)

    def joined(field: str) -> dict[int, np.ndarray]:
        return {j: np.concatenate([getattr(p, field)[j] for p in parts]) for j in keys}

    return Domains(joined("signs"), joined("lo"), joined("hi"), min(p.fresh for p in parts))


def _select(result: DomainBound, mask: np.ndarray) -> DomainBound:
    ev = result.evaluation
    keep = np.flatnonzero(mask)
    sub = Evaluation(
        ev.value[keep],
        {},
        {},
        ev.coeffs[keep],
        {j: lam[keep] for j, lam in ev.relu_lams.items()},
    )
    return DomainBound(result.slack[keep], result.row[keep], sub)


def _leaf_proved(
    steps: Sequence[Step], bounds: Bounds, domains: Domains, d: int, poly: Polytope
) -> bool:
    """A domain with nothing left to split: the Lagrangian bound is exact at the optimal
    beta, so optimize longer."""
    one = np.array([d])
    sub = domains.take(one)
    result = bound_domains(steps, bounds.select(one), sub, poly, iterations=LEAF_ITERATIONS)
    return bool(result.slack[0] > 0)


def _leaf_probe(
    steps: Sequence[Step], bounds: Bounds, d: int, poly: Polytope, probe: Probe
) -> np.ndarray | None:
    """On a domain where every ReLU is fixed the network is affine: the LP over the box
    and the sign constraints finds its most unsafe input, which is then probed (the
    LP never proves anything: its float64 optimum ignores float32 rounding)."""
    region = linear_region(steps, bounds, d)
    if region is None:
        return None
    M, c, rows, rhs = region
    n = M.shape[1]
    # minimize t  s.t.  A (M x + c) - b <= t,  sign rows,  x in the box
    A = poly.A @ M
    a_ub = np.block([[A, -np.ones((len(A), 1))], [rows, np.zeros((len(rows), 1))]])
    b_ub = np.concatenate([poly.b - poly.A @ c, rhs])
    box = [*zip(bounds.lo[0][d], bounds.hi[0][d], strict=True), (None, None)]
    res = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=b_ub, bounds=box, method="highs")
    if res.status != 0 or res.x[-1] > 0:
        return None
    return probe(res.x[None, :n])


def linear_region(
    steps: Sequence[Step], bounds: Bounds, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The affine map ``x -> M x + c`` of the network on domain ``d``, where every ReLU is
    stable or split, and the constraints ``rows x <= rhs`` that keep each split's sign.
    None when some ReLU is still unstable or a max-pool is in the way."""
    n_in = bounds.lo[0].shape[1]
    M, c = np.eye(n_in), np.zeros(n_in)
    rows, rhs = [np.zeros((0, n_in))], [np.zeros(0)]
    for j, step in enumerate(steps):
        if isinstance(step, ReluStep):
            lo, hi = bounds.lo[j][d], bounds.hi[j][d]
            if ((lo < 0) & (hi > 0)).any():
                return None
            active = lo >= 0
            sign = np.where(active, 1.0, -1.0)
            rows.append(-sign[:, None] * M)  # sign * (M x + c) >= 0
            rhs.append(sign * c)
            M, c = M * active[:, None], c * active
        elif isinstance(step, Affine):
            M = step.apply(M.T).T
            c = step.apply(c[None])[0] + step.bias()
        else:
            return None
    return M, c, np.concatenate(rows), np.concatenate(rhs)
