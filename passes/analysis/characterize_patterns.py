"""Activation patterns that imply the property (Gopinath et al. 2019, Dingliwal et al.
2020): input regions described by the network's structure.

A pattern fixes the sign of some ReLU inputs (``+``: >= 0, ``-``: <= 0).  It is
reported only when "every input of the case's box whose ReLUs have these signs
is safe" is proved over the WHOLE box, not just over the boxes it came from:
CROWN bounds with the signs assumed, the assumptions entered as Lagrangian
terms optimized with the slopes (beta-CROWN, ``relu_bab.bound_domains``), and,
for a first candidate that resists, a MILP (HiGHS) over the box with those
neurons fixed (its "infeasible" holds up to HiGHS's tolerances, which the
unsafe set is enlarged to cover, as in the verifier; the method says which).

Candidates come from the proved-safe boxes: the largest safe box not yet
covered gives its own pattern (the neurons its bounds fixed, minus those fixed
on the whole box), which is then shrunk greedily (one layer alone, then
chunks of neurons dropped while the proof still holds).  A shorter pattern
describes a larger region.  Each pattern covers the safe boxes whose own
pattern agrees with it (every input of those boxes satisfies it), and its
region's share of the box is estimated by sampling.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relugate.compiler.spec import Case
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.characterize import SAFE, Characterization, relu_layers, signs_of
from relugate.passes.analysis.lp_encoding import forward_steps
from relugate.passes.analysis.milp import milp_find_any
from relugate.passes.analysis.relu_bab import Domains, bound_domains, domain_bounds, root_bounds
from relugate.passes.analysis.steps import Step
from relugate.runtime.regions import boxes_contain

BATCH = 16
"""Candidate patterns bounded together."""
SAMPLES = 10_000
"""Samples of a case's box for each region estimate."""
MILP_SECONDS = 2.0
"""Time limit of the MILP tried on a first candidate that beta-CROWN leaves open."""


@dataclass
class Pattern:
    case: int
    signs: np.ndarray  # (R,) int8; 0: not constrained
    method: str  # "beta-crown" or "milp"
    covers: np.ndarray  # indices of the safe leaves inside its region
    boxes_volume: float  # their volume, relative to the case's box
    region_estimate: float  # share of the case's box where the pattern holds (sampled)

    def to_json(self, layers: Sequence[tuple[int, int]]) -> dict[str, Any]:
        starts = np.cumsum([0] + [n for _, n in layers])
        neurons = []
        for col in np.flatnonzero(self.signs):
            layer = int(np.searchsorted(starts, col, side="right") - 1)
            neurons.append([layer, int(col - starts[layer]), "+" if self.signs[col] > 0 else "-"])
        return {
            "case": self.case,
            "method": self.method,
            "size": len(neurons),
            "neurons": neurons,
            "covers_boxes": self.covers.tolist(),
            "boxes_volume": self.boxes_volume,
            "region_estimate": self.region_estimate,
        }


class _Prover:
    """Proves ``signs => safe`` over one case's box, many candidates at a time."""

    def __init__(self, steps: Sequence[Step], case: Case, layers: list[tuple[int, int]]) -> None:
        self.steps, self.case, self.layers = steps, case, layers
        self.root = root_bounds(steps, case.box.lo[None], case.box.hi[None])
        self.fixed = signs_of(steps, self.root)[0]  # stable on the whole box: implied
        self.cols = np.cumsum([0] + [n for _, n in layers])

    def domains(self, cand: np.ndarray) -> Domains:
        d = len(cand)
        signs = {
            j: cand[:, self.cols[i] : self.cols[i + 1]] for i, (j, _) in enumerate(self.layers)
        }
        used = [j for j, s in signs.items() if s.any()]
        return Domains(
            signs,
            {j: np.repeat(self.root.lo[j], d, axis=0) for j, _ in self.layers},
            {j: np.repeat(self.root.hi[j], d, axis=0) for j, _ in self.layers},
            min(used) if used else len(self.steps),
        )

    def prove(self, cand: np.ndarray) -> np.ndarray:
        """Per candidate (rows of signs): proved by beta-CROWN?"""
        ok = np.ones(len(cand), bool)
        for start in range(0, len(cand), BATCH):
            part = cand[start : start + BATCH]
            doms = self.domains(part)
            bounds = domain_bounds(self.steps, self.root, doms)
            for poly in self.case.unsafe:
                ok[start : start + len(part)] &= (
                    bound_domains(self.steps, bounds, doms, poly).slack > 0
                )
        return ok

    def prove_milp(self, cand: np.ndarray, seconds: float) -> bool:
        bounds: Bounds = domain_bounds(self.steps, self.root, self.domains(cand[None]))
        polys = [(p.A, p.b) for p in self.case.unsafe]
        return milp_find_any(self.steps, bounds, polys, time_limit=seconds).status == "infeasible"


def find_patterns(
    steps: Sequence[Step],
    state: Characterization,
    deadline: float,
    rng: np.random.Generator,
    max_patterns: int = 20,
) -> dict[str, Any]:
    """Patterns proved to imply the property, covering the safe boxes largest first,
    until ``deadline``; with sampled estimates of the regions they describe."""
    found: list[Pattern] = []
    summary: list[dict[str, Any]] = []
    if not state.layers:  # no ReLU: no activation pattern to describe a region by
        return {"items": [], "cases": summary}
    vol = state.volumes()
    lv = state.leaves
    for c, case in enumerate(state.prop.cases):
        safe = np.flatnonzero((lv.case == c) & (lv.status == SAFE))
        if not safe.size or time.monotonic() >= deadline:
            continue
        prover = _Prover(steps, case, state.layers)
        todo = np.ones(safe.size, bool)
        mine: list[Pattern] = []
        while todo.any() and time.monotonic() < deadline and len(found) + len(mine) < max_patterns:
            batch = np.flatnonzero(todo)[np.argsort(-vol[safe[todo]], kind="stable")[:BATCH]]
            todo[batch] = False
            cand = np.where(prover.fixed != 0, 0, lv.pattern[safe[batch]]).astype(np.int8)
            ok = prover.prove(cand)
            method = "beta-crown"
            if ok.any():
                sigma = _shrink(prover, cand[int(np.argmax(ok))], deadline)
                todo[batch[ok]] = True  # proved too: covered below, or tried again
            else:
                left = deadline - time.monotonic()
                if left < 1 or not prover.prove_milp(cand[0], min(MILP_SECONDS, left)):
                    continue
                sigma, method = cand[0], "milp"
            sup = np.flatnonzero(sigma)
            agree = np.all(lv.pattern[np.ix_(safe, sup)] == sigma[sup], axis=1)
            todo &= ~agree
            covers = safe[agree]
            mine.append(Pattern(c, sigma, method, covers, float(vol[covers].sum()), 0.0))
        found += mine
        summary.append(_estimate(steps, state, c, mine, rng))
    return {
        "items": [p.to_json(state.layers) for p in found],
        "cases": summary,
    }


def _shrink(prover: _Prover, sigma: np.ndarray, deadline: float) -> np.ndarray:
    """Fewer constrained neurons while the proof holds: one layer alone first, then
    chunks of neurons dropped (halving the chunk when none can go)."""
    budget = time.monotonic() + max(1.0, (deadline - time.monotonic()) / 3)
    cols = prover.cols
    layer_only = []
    for i in range(len(prover.layers)):
        cand = np.zeros_like(sigma)
        cand[cols[i] : cols[i + 1]] = sigma[cols[i] : cols[i + 1]]
        if cand.any() and np.count_nonzero(cand) < np.count_nonzero(sigma):
            layer_only.append(cand)
    if layer_only:
        cands = np.stack(layer_only)
        ok = prover.prove(cands)
        if ok.any():
            sizes = np.where(ok, np.count_nonzero(cands, axis=1), np.iinfo(np.int64).max)
            sigma = cands[int(np.argmin(sizes))]
    sup = np.flatnonzero(sigma)
    chunk = max(1, sup.size // 8)
    while chunk >= 1 and sup.size > 1 and time.monotonic() < min(budget, deadline):
        groups = [sup[i : i + chunk] for i in range(0, sup.size, chunk)][:BATCH]
        cands = np.repeat(sigma[None], len(groups), axis=0)
        for row, g in enumerate(groups):
            cands[row, g] = 0
        ok = prover.prove(cands)
        if ok.any():
            sigma = cands[int(np.argmax(ok))]
            sup = np.flatnonzero(sigma)
            continue
        if chunk == 1:
            break
        chunk = max(1, chunk // 2)
    return sigma


def pattern_holds(steps: Sequence[Step], x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Per row of ``x``: do its ReLU inputs (float64) have the pattern's signs?"""
    acts = forward_steps(steps, x)
    pre = np.concatenate([acts[j] for j, _ in relu_layers(steps)], axis=1)
    ok = np.where(signs > 0, pre >= 0, np.where(signs < 0, pre <= 0, True))
    return np.all(ok, axis=1)


def _estimate(
    steps: Sequence[Step],
    state: Characterization,
    c: int,
    patterns: list[Pattern],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Sampled shares of the case's box: each pattern's region, their union, the safe
    boxes; and a sanity count of samples in a region whose float64 output is unsafe."""
    box = state.prop.cases[c].box
    x = box.sample(SAMPLES, rng)
    union = np.zeros(len(x), bool)
    for p in patterns:
        inside = pattern_holds(steps, x, p.signs)
        p.region_estimate = float(inside.mean())
        union |= inside
    y = forward_steps(steps, x)[-1]
    lv = state.leaves
    safe = (lv.case == c) & (lv.status == SAFE)
    in_boxes = boxes_contain(lv.lo[safe], lv.hi[safe], x)
    return {
        "case": c,
        "samples": SAMPLES,
        "patterns": len(patterns),
        "union_estimate": float(union.mean()),
        "safe_boxes_estimate": float(in_boxes.mean()),
        "either_estimate": float((union | in_boxes).mean()),
        "unsafe_samples_in_patterns": int((union & state.prop.cases[c].is_unsafe(y)).sum()),
    }
