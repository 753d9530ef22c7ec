"""Hidden-layer gates: the region ``H`` a clamp keeps a hidden layer in.

Design (per cut, see ``compiler/hidden_onnx``): the hidden values of sampled
inputs of every case, split into those whose output the original keeps safe
(``S``) and the rest, and a float32-sound reachable box ``R`` (hull of the cut's
CROWN boxes over the cases).  The regions tried form one nested family in a
parameter ``u`` (a larger ``u`` gives a larger box), so that the largest
provable ``u`` is found by bisection:

* ``u in [0, 1]``: the hull of the anchor ``a`` and the ``ceil(u |S|)`` safe samples
  with the largest safety margins (the tail's output farthest from the unsafe
  sets): the samples nearest the unsafe sets are given up first;
* ``u in [1, 2]``: ``Q + (u - 1) (R - Q)``, from the hull ``Q`` of all of ``S``
  toward everything reachable.

The anchor ``a`` is the safe sample with the largest safety margin (without safe
samples: the uniform point with the largest one in ``R``, or in ``R`` widened).
Without safe samples (the original is unsafe everywhere it was sampled) the
family is ``a + u (R - a)``.
(Per-coordinate quantile boxes were tried first: on ACAS Xu prop 2 at the last
hidden layer even the median box did not prove, while the hull of the 1,999
safest of 2,000 safe samples does.)
Fidelity on the original-safe samples is the fraction of ``S`` inside ``H``: the
clamp leaves them bit for bit unchanged, and changes every other one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relugate.passes.analysis.hidden_proof import Range, TailProof, clip_box
from relugate.passes.analysis.steps import float32_box

WIDEN_STEPS = 5
"""Bisection steps of ``widen_region``."""
BISECTIONS = 11
"""Bisection steps on ``u`` after its end points."""
ANCHOR_POINTS = 4096
"""Uniform points tried as anchors per scale when there are no safe samples."""
ANCHOR_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Widening factors of ``R`` (about its center) for those points."""

Provable = Callable[[Range], bool]
Margin = Callable[[np.ndarray], np.ndarray]  # hidden rows -> safety margin (> 0: safe)


@dataclass(frozen=True, eq=False)
class HiddenGate:
    """A clamp of the cut tensor into ``[lo, hi]`` (float32 values), with its proof."""

    layer: int  # the cut's index (0: first hidden layer)
    tensor: str
    shape: tuple[int, ...]
    lo: np.ndarray
    hi: np.ndarray
    reach: list[list[Range]]  # per property, per case: bounds of the cut on the case box
    proofs: list[TailProof] = field(default_factory=list)
    design: dict[str, Any] = field(default_factory=dict)

    def boxes(self) -> list[list[Range]]:
        """Per property and case, the box the clamped hidden vector lies in."""
        return [[clip_box(r, self.lo, self.hi) for r in per_prop] for per_prop in self.reach]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "hidden",
            "layer": self.layer,
            "tensor": self.tensor,
            "shape": list(self.shape),
            "region": {"lo": self.lo.tolist(), "hi": self.hi.tolist()},
            "reach": [
                [{"lo": lo.tolist(), "hi": hi.tolist()} for lo, hi in per_prop]
                for per_prop in self.reach
            ],
            "tail_proof": [p.to_json() for p in self.proofs],
            "design": self.design,
            "formula": self.formula(),
        }

    def formula(self) -> str:
        return f"h{self.layer} <- clip(h{self.layer}, lo, hi) ({int(np.prod(self.shape))} values)"


@dataclass
class Samples:
    """Hidden values at a cut (float32 values as float64) and whether the output was safe."""

    hidden: np.ndarray
    safe: np.ndarray

    def inside(self, region: Range) -> float | None:
        """Fraction of the safe samples inside ``region`` (None: no safe sample)."""
        s = self.hidden[self.safe]
        if len(s) == 0:
            return None
        return float(np.all((s >= region[0]) & (s <= region[1]), axis=1).mean())


def float32_region(lo: np.ndarray, hi: np.ndarray) -> Range:
    """The region rounded outwards to float32 values (the clamp's constants)."""
    lo32, hi32 = float32_box(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    return lo32, np.maximum(hi32, lo32)


def anchor(samples: Samples, hull: Range, margin: Margin, rng: np.random.Generator) -> np.ndarray:
    """The safest candidate (largest margin): among the safe samples when there are any,
    else among uniform points of ``hull`` widened ``ANCHOR_SCALES`` times about its
    center (the clamp may send hidden values where the network never goes); empty
    when no candidate is safe."""
    candidates = samples.hidden[samples.safe]
    if len(candidates):
        values = margin(candidates)
        best = int(np.argmax(values))
        return candidates[best] if values[best] > 0 else np.empty(0)
    lo, hi = hull
    center = 0.5 * (lo + hi)
    half = np.maximum(0.5 * (hi - lo), 0.5 * float(np.mean(hi - lo)))
    for scale in ANCHOR_SCALES:
        points = center + scale * half * (2 * rng.random((ANCHOR_POINTS, lo.size)) - 1)
        values = margin(points)
        best = int(np.argmax(values))
        if values[best] > 0:
            return points[best]
    return np.empty(0)


class Family:
    """The nested regions ``H(u)`` of the module doc."""

    def __init__(self, samples: Samples, hull: Range, a: np.ndarray, margin: Margin) -> None:
        self.a = a
        self.hull = hull
        s = samples.hidden[samples.safe]
        self.ordered = s[np.argsort(-margin(s), kind="stable")] if len(s) else s
        self.top = 2.0 if len(s) else 1.0

    def _hull(self, k: int) -> Range:
        part = self.ordered[:k]
        return np.minimum(part.min(axis=0), self.a), np.maximum(part.max(axis=0), self.a)

    def __call__(self, u: float) -> Range:
        a, (r_lo, r_hi) = self.a, self.hull
        if not len(self.ordered):
            return float32_region(a + u * (r_lo - a), a + u * (r_hi - a))
        n = len(self.ordered)
        if u <= 1:
            return float32_region(*self._hull(max(1, int(np.ceil(u * n)))))
        t = u - 1
        lo, hi = self._hull(n)
        return float32_region(
            lo + t * (np.minimum(r_lo, lo) - lo), hi + t * (np.maximum(r_hi, hi) - hi)
        )


def largest(family: Family, provable: Provable) -> tuple[float, int] | None:
    """The largest ``u`` found provable (bisection from the ends), and the attempts;
    None when even the anchor alone is not."""
    attempts = 0

    def ok(u: float) -> bool:
        nonlocal attempts
        attempts += 1
        return provable(family(u))

    tested_bad = False
    if family.top == 2.0 and ok(1.0):
        good, bad = 1.0, 2.0
    elif ok(0.0):
        good, bad, tested_bad = 0.0, 1.0, family.top == 2.0
    else:
        return None
    if not tested_bad and ok(bad):
        return bad, attempts
    for _ in range(BISECTIONS):
        mid = 0.5 * (good + bad)
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return good, attempts


def design_region(
    samples: Samples, hull: Range, provable: Provable, margin: Margin, seed: int = 0
) -> tuple[Range, dict[str, Any]] | None:
    """The largest provable region of the family at one cut, with what the search did;
    None when no region there can be proved."""
    a = anchor(samples, hull, margin, np.random.default_rng(seed))
    if a.size == 0:
        return None
    family = Family(samples, hull, a, margin)
    found = largest(family, provable)
    if found is None:
        return None
    u, attempts = found
    region = family(u)
    info = {
        "u": u,
        "attempts": attempts,
        "samples": len(samples.hidden),
        "safe_samples": int(samples.safe.sum()),
        "safe_inside": samples.inside(region),
    }
    return region, info


def widen_region(
    region: Range, samples: Samples, hull: Range, provable: Provable
) -> tuple[Range, float]:
    """``region`` with the sides that hold every safe sample (those no search moved in)
    pushed toward ``hull`` by the largest provable fraction ``t`` (bisection): inputs
    beyond the design samples then keep their hidden values too.  Returns the region
    and ``t``."""
    s = samples.hidden[samples.safe]
    lo, hi = region
    free_lo = lo <= s.min(axis=0) if len(s) else np.zeros(lo.size, dtype=bool)
    free_hi = hi >= s.max(axis=0) if len(s) else np.zeros(hi.size, dtype=bool)
    if not (free_lo.any() or free_hi.any()):
        return region, 0.0

    def at(t: float) -> Range:
        return float32_region(
            np.where(free_lo, lo + t * (np.minimum(hull[0], lo) - lo), lo),
            np.where(free_hi, hi + t * (np.maximum(hull[1], hi) - hi), hi),
        )

    if provable(at(1.0)):
        return at(1.0), 1.0
    good, bad = 0.0, 1.0
    for _ in range(WIDEN_STEPS):
        mid = 0.5 * (good + bad)
        good, bad = (mid, bad) if provable(at(mid)) else (good, mid)
    return (at(good) if good > 0 else region), good
