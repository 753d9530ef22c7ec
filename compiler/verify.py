"""``verify_model``: decide whether a model satisfies its VNN-LIB properties.

Cheap methods first, for every unsafe polytope of every case:
1. sampling: corners, center and uniform samples of each box;
2. crown: one symbolic bound over the whole box;
3. pgd: gradient search for an unsafe output, on what crown did not prove (on
   wide inputs the margin attack: float32 PGD with restarts per polytope, all of a
   case's polytopes in one batch, reported as ``margin-pgd``);
4. search, until the deadline: input splitting (branch and bound) when the
   input has few dimensions; otherwise, on bounds whose intermediate layers are
   tightened by optimized slopes, one MILP per case over its open polytopes
   when at most 64 ReLUs are unstable (HiGHS, big-M over those bounds with the
   float32 margins as bounded slack); else per polytope, easiest first, ReLU
   splitting (branch and bound with beta-CROWN bounds) for half the time left,
   then one MILP over the polytopes still open.  A
   MILP "infeasible" is exact only up to the solver's tolerances, which the
   unsafe set is enlarged to cover (see ``milp``); its method is reported as
   ``milp`` so users can tell.
A counterexample is reported only after onnxruntime, running the original
file on the float32 input, confirms that the output is unsafe.  The network
analysed is the imported one, before any rewrite, with float32 rounding
margins, so "holds" is a claim about the file as deployed in float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relugate.compiler.compile import load_properties
from relugate.compiler.domain import Box
from relugate.compiler.frontend import LoadedModel, load_model
from relugate.compiler.importer import import_network
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import Case, Polytope, Property
from relugate.passes.analysis.attack import pgd_unsafe, sample_unsafe, unsafe_margin
from relugate.passes.analysis.bab import input_split, refuted
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import spec_lower_bounds
from relugate.passes.analysis.margin_attack import margin_attack
from relugate.passes.analysis.milp import milp_find_any
from relugate.passes.analysis.relu_bab import Probe, relu_split, root_bounds
from relugate.passes.analysis.steps import ReluStep, Step, steps_of

INPUT_SPLIT_MAX_DIM = 16
"""Input splitting is used up to this many input dimensions."""
RELU_SPLIT_SHARE = 0.5
"""Wider inputs: the share of the time left that ReLU splitting gets before the MILP."""
ATTACK_SHARE = 0.1
"""Wider inputs: the share of the time left for the margin attack on a case (at most
``ATTACK_MAX_SECONDS``); on mnistfc it succeeds in the first second or not at all."""
ATTACK_MAX_SECONDS = 15.0
MILP_FIRST_MAX_UNSTABLE = 64
"""Up to this many unstable ReLUs the MILP alone is faster than ReLU splitting (a
20-16-16 net on a wide box: HiGHS 2 s, splitting 28,000 domains in 9 s)."""


@dataclass
class Goal:
    """One unsafe polytope of one case: the unit of work."""

    prop: int
    case: Case
    poly: Polytope
    status: str = "open"
    method: str = ""
    seconds: float = 0.0
    boxes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.prop,
            "status": self.status,
            "method": self.method,
            "seconds": round(self.seconds, 4),
            "boxes": self.boxes,
        }


@dataclass
class VerifyResult:
    verdict: str  # "holds", "violated", "unknown"
    method: str
    seconds: float
    counterexample: dict[str, list[float]] | None = None
    goals: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "verdict": self.verdict,
            "method": self.method,
            "seconds": round(self.seconds, 4),
            "goals": self.goals,
        }
        if self.counterexample is not None:
            data["counterexample"] = self.counterexample
        return data

    def vnncomp(self) -> str:
        """The VNN-COMP result file: sat/unsat/timeout, and the witness for sat."""
        word = {"holds": "unsat", "violated": "sat", "unknown": "timeout"}[self.verdict]
        if self.counterexample is None:
            return word + "\n"
        xs = [f"(X_{i} {v!r})" for i, v in enumerate(self.counterexample["input"])]
        ys = [f"(Y_{i} {v!r})" for i, v in enumerate(self.counterexample["output"])]
        return word + "\n(" + "\n ".join(xs + ys) + ")\n"


def float32_inside(x: np.ndarray, box: Box) -> np.ndarray:
    """``x`` as float32 values that lie inside the box (rounding can step outside)."""
    x32 = np.clip(x, box.lo, box.hi).astype(np.float32)
    low = x32.astype(np.float64) < box.lo
    x32[low] = np.nextafter(x32[low], np.float32(np.inf))
    high = x32.astype(np.float64) > box.hi
    x32[high] = np.nextafter(x32[high], np.float32(-np.inf))
    return x32


@dataclass
class Checker:
    """Confirms candidates by running the original file in onnxruntime."""

    loaded: LoadedModel
    net: Network
    found: dict[str, list[float]] | None = None

    def confirm(self, x: np.ndarray, case: Case, poly: Polytope) -> bool:
        x32 = float32_inside(x, case.box)
        if not case.box.contains(x32.astype(np.float64))[0]:
            return False
        y = run_batch(str(self.loaded.path), self.net.input, x32[None])[0].astype(np.float64)
        if not poly.contains(y[None])[0]:
            return False
        self.found = {"input": x32.astype(float).tolist(), "output": y.tolist()}
        return True


def _goals(props: Sequence[Property]) -> list[Goal]:
    return [
        Goal(i, case, poly)
        for i, prop in enumerate(props)
        for case in prop.cases
        for poly in case.unsafe
    ]


def _sample(
    goals: list[Goal], net: Network, checker: Checker, rng: np.random.Generator
) -> Goal | None:
    """Uniform samples of each case's box, checked against all of its polytopes at once."""
    by_case: dict[int, list[Goal]] = {}
    for goal in goals:
        by_case.setdefault(id(goal.case), []).append(goal)
    for group in by_case.values():
        case = group[0].case
        for goal, x in zip(
            group, sample_unsafe(net, case.box, [g.poly for g in group], rng), strict=True
        ):
            if x is not None and checker.confirm(x, case, goal.poly):
                goal.status, goal.method = "violated", "sampling"
                return goal
    return None


def _attack(
    goal: Goal, net: Network, checker: Checker, rng: np.random.Generator, deadline: float
) -> bool:
    """PGD on one goal; goals on wide boxes are left to ``_case_attack``, which attacks
    all of a case's polytopes in one batch."""
    if goal.case.box.dim > INPUT_SPLIT_MAX_DIM:
        return False
    start = time.monotonic()
    x = pgd_unsafe(net, goal.case.box, goal.poly, rng, deadline=deadline)
    goal.seconds += time.monotonic() - start
    if x is not None and checker.confirm(x, goal.case, goal.poly):
        goal.status, goal.method = "violated", "pgd"
        return True
    return False


def _case_attack(group: list[Goal], net: Network, checker: Checker, deadline: float) -> None:
    """The margin attack on the open polytopes of one case (a wide box)."""
    case = group[0].case
    polys = [g.poly for g in group]
    budget = min(ATTACK_MAX_SECONDS, (deadline - time.monotonic()) * ATTACK_SHARE)
    result = margin_attack(
        net,
        case.box,
        polys,
        lambda x, p: checker.confirm(x.astype(np.float64), case, polys[p]),
        np.random.default_rng(0),
        time.monotonic() + budget,
    )
    for goal in group:
        goal.seconds += result.seconds / len(group)
    if result.x is not None:
        hit = group[result.polytope]
        hit.status, hit.method = "violated", "margin-pgd"


def _bound(goal: Goal, steps: Sequence[Step]) -> None:
    start = time.monotonic()
    safe, _, _ = refuted(steps, goal.case.box.lo[None], goal.case.box.hi[None], goal.poly)
    goal.seconds += time.monotonic() - start
    if safe[0]:
        goal.status, goal.method = "holds", "crown"


def _milp(
    goals: list[Goal], steps: Sequence[Step], root: Bounds, checker: Checker, deadline: float
) -> None:
    """One MILP (HiGHS) over a case's box for all its open polytopes at once (a
    disjunction), big-M over the root's optimized bounds."""
    case = goals[0].case
    budget = deadline - time.monotonic()
    if budget <= 1:
        return
    result = milp_find_any(steps, root, [(g.poly.A, g.poly.b) for g in goals], time_limit=budget)
    for goal in goals:
        goal.seconds += result.seconds / len(goals)
    if result.status == "infeasible":
        for goal in goals:
            goal.status, goal.method = "holds", "milp"
    elif result.x is not None and result.polytope is not None:
        hit = goals[result.polytope]
        if checker.confirm(result.x, case, hit.poly):
            hit.status, hit.method = "violated", "milp"


def _relu_search(
    goals: list[Goal],
    net: Network,
    steps: Sequence[Step],
    root: Bounds,
    checker: Checker,
    deadline: float,
) -> None:
    """ReLU splitting on each goal, easiest first (by the CROWN bound on the root), for
    ``RELU_SPLIT_SHARE`` of the time left, shared equally (a goal decided early leaves
    its time to the rest); then one MILP over the goals still open.  (One MILP per
    goal proves a hard mnist-net_256x2 prop_1_0.03 target in 27 s where the joint one
    gives up after 110 s, but on prop_3_0.03 the joint one proves four targets in the
    time where one per goal fails on the first.)"""
    order = _easiest_first(goals, steps, root)
    split_end = time.monotonic() + (deadline - time.monotonic()) * RELU_SPLIT_SHARE
    for i, goal in enumerate(order):
        end = time.monotonic() + (split_end - time.monotonic()) / (len(order) - i)
        result = relu_split(steps, root, goal.poly, _prober(net, checker, goal), end)
        goal.seconds += result.seconds
        goal.boxes += result.domains
        if result.status != "unknown":
            goal.status, goal.method = result.status, "relu-split"
        if goal.status == "violated":
            return
    still_open = [g for g in order if g.status == "open"]
    if still_open:
        _milp(still_open, steps, root, checker, deadline)


def _easiest_first(goals: list[Goal], steps: Sequence[Step], root: Bounds) -> list[Goal]:
    """Goals by decreasing CROWN lower bound of their margin on the root box."""
    slack = []
    for goal in goals:
        lb, _ = spec_lower_bounds(steps, root, goal.poly.A)
        slack.append(float((lb[0] - goal.poly.b).max()))
    return [goals[i] for i in np.argsort(slack, kind="stable")[::-1]]


def _prober(net: Network, checker: Checker, goal: Goal) -> Probe:
    def probe(x: np.ndarray) -> np.ndarray | None:
        y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1)
        for i in np.flatnonzero(unsafe_margin(y.astype(np.float64), goal.poly) <= 0):
            if checker.confirm(x[i], goal.case, goal.poly):
                return x[i]
        return None

    return probe


def _unstable(steps: Sequence[Step], bounds: Bounds) -> int:
    return sum(
        int(((bounds.lo[j] < 0) & (bounds.hi[j] > 0)).sum())
        for j, step in enumerate(steps)
        if isinstance(step, ReluStep)
    )


def _wide_search(
    group: list[Goal], net: Network, steps: Sequence[Step], checker: Checker, deadline: float
) -> None:
    _case_attack(group, net, checker, deadline)
    if any(g.status == "violated" for g in group):
        return
    case = group[0].case
    root = root_bounds(steps, case.box.lo[None], case.box.hi[None])
    if _unstable(steps, root) > MILP_FIRST_MAX_UNSTABLE:
        _relu_search(group, net, steps, root, checker, deadline)
    else:
        _milp(group, steps, root, checker, deadline)


def _open_wide_cases(goals: list[Goal]) -> list[list[Goal]]:
    """Open goals on boxes too wide to split, grouped by case."""
    groups: dict[int, list[Goal]] = {}
    for goal in goals:
        if goal.status == "open" and goal.case.box.dim > INPUT_SPLIT_MAX_DIM:
            groups.setdefault(id(goal.case), []).append(goal)
    return list(groups.values())


def _search(
    goal: Goal, net: Network, steps: Sequence[Step], checker: Checker, deadline: float
) -> None:
    result = input_split(
        net,
        steps,
        goal.case.box,
        goal.poly,
        lambda x: checker.confirm(x, goal.case, goal.poly),
        deadline,
    )
    goal.seconds += result.seconds
    goal.boxes += result.boxes
    if result.status != "unknown":
        goal.status, goal.method = result.status, "input-split"


def verify_model(
    model: str | Path, specs: Sequence[str | Path], timeout: float = 60.0, seed: int = 0
) -> VerifyResult:
    started = time.monotonic()
    deadline = started + timeout
    loaded = load_model(model)
    net = import_network(loaded)
    props = load_properties([Path(s) for s in specs], net)
    steps = steps_of(net)
    checker = Checker(loaded, net)
    rng = np.random.default_rng(seed)
    goals = _goals(props)
    hit = _sample(goals, net, checker, rng)
    if hit is not None:
        return _result(goals, "violated", hit.method, started, checker)
    for goal in goals:
        if time.monotonic() < deadline:
            _bound(goal, steps)
    for goal in [g for g in goals if g.status == "open"]:
        if time.monotonic() < deadline and _attack(goal, net, checker, rng, deadline):
            return _result(goals, "violated", goal.method, started, checker)
    for goal in [g for g in goals if g.status == "open" and g.case.box.dim <= INPUT_SPLIT_MAX_DIM]:
        _search(goal, net, steps, checker, deadline)
        if goal.status == "violated":
            return _result(goals, "violated", goal.method, started, checker)
    for group in _open_wide_cases(goals):
        _wide_search(group, net, steps, checker, deadline)
        hit = next((g for g in group if g.status == "violated"), None)
        if hit is not None:
            return _result(goals, "violated", hit.method, started, checker)
    if all(g.status == "holds" for g in goals):
        methods = sorted({g.method for g in goals})
        return _result(goals, "holds", "+".join(methods), started, checker)
    return _result(goals, "unknown", "timeout", started, checker)


def _result(
    goals: list[Goal], verdict: str, method: str, started: float, checker: Checker
) -> VerifyResult:
    return VerifyResult(
        verdict,
        method,
        time.monotonic() - started,
        checker.found if verdict == "violated" else None,
        [g.to_json() for g in goals],
    )
