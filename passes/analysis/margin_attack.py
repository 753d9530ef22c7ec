"""A strong falsifier for wide input boxes: batched float32 PGD on per-target margins.

The unsafe set of a case is a disjunction of polytopes (for a classifier, one
per target class).  Each polytope is attacked by its own restarts, all in one
batch: the loss of a point is its polytope's margin ``max_i (A_i y - b_i)``
(the output is unsafe when it is <= 0), which the point descends.

Each round draws fresh starts, spreads them with output-diversified
initialization (ODI: a few sign-gradient steps of the size of the box that
push a random direction of the output), then runs sign-gradient descent with
momentum and a cosine-decaying step (as in APGD for the L-infinity ball).
The network runs in float32, as deployed.  Nothing here is trusted: every
point whose float32 margin is <= 0 goes to ``confirm`` (the verifier runs the
original model in onnxruntime), and only a confirmed point is returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope

Confirm = Callable[[np.ndarray, int], bool]
"""Is the input (flat) unsafe for the polytope of that index, in the original model?"""
Seed = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Outputs (n, m) -> a value per point and the output gradient to pull back (n, m)."""


CONFIRMS_PER_STEP = 4
"""Float32-unsafe points offered to ``confirm`` per step, most unsafe first (each
costs an onnxruntime run; the others keep descending and come back lower)."""


@dataclass(frozen=True)
class AttackConfig:
    restarts: int = 24
    """Points per polytope and round."""
    steps: int = 80
    """Descent steps per round (after ODI)."""
    odi_steps: int = 4
    momentum: float = 0.75
    """APGD's weight of the new sign step against the previous move."""
    max_rounds: int = 1000


@dataclass
class AttackResult:
    x: np.ndarray | None  # the confirmed counterexample (flat float32), or None
    polytope: int  # its polytope's index, -1 when none
    rounds: int
    points: int  # starts tried
    best_margin: float  # the lowest float32 margin reached (<= 0: unsafe in float32)
    seconds: float


@dataclass(frozen=True)
class Targets:
    """The polytopes stacked, padded to one row count (padding rows never win the max)."""

    A: np.ndarray  # (P, R, m) float32
    b: np.ndarray  # (P, R) float32, +inf on padding rows

    @staticmethod
    def of(polys: Sequence[Polytope]) -> Targets:
        rows = max(max(p.A.shape[0] for p in polys), 1)
        m = polys[0].A.shape[1]
        A = np.zeros((len(polys), rows, m), np.float32)
        b = np.full((len(polys), rows), np.inf, np.float32)
        for i, p in enumerate(polys):
            A[i, : p.A.shape[0]] = p.A
            b[i, : p.A.shape[0]] = p.b
        return Targets(A, b)

    def margins(self, y: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per point, the margin of its polytope ``which`` and the gradient seed (its
        worst row)."""
        A = self.A[which]
        rows = np.einsum("nm,nrm->nr", y, A) - self.b[which]
        worst = rows.argmax(axis=1)
        idx = np.arange(len(y))
        return rows[idx, worst], A[idx, worst]


def inner_box(box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The float32 values inside the box: the smallest >= lo and the largest <= hi."""
    lo = box.lo.astype(np.float32)
    hi = box.hi.astype(np.float32)
    lo = np.where(lo.astype(np.float64) < box.lo, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = np.where(hi.astype(np.float64) > box.hi, np.nextafter(hi, np.float32(-np.inf)), hi)
    return lo, hi


def forward_backward(
    net: Network, x: np.ndarray, seed: Seed
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs of ``x`` in float32, and ``seed``'s value and input gradient on them."""
    acts = net.activations(x, np.float32)
    y = acts[-1].reshape(len(x), -1)
    value, g = seed(y)
    g = g.astype(np.float32).reshape(acts[-1].shape)
    for layer, a in zip(reversed(net.layers), reversed(acts[:-1]), strict=True):
        g = layer.backward(a, g)
    return y, value, g.reshape(len(x), -1)


def margin_attack(
    net: Network,
    box: Box,
    polys: Sequence[Polytope],
    confirm: Confirm,
    rng: np.random.Generator,
    deadline: float,
    config: AttackConfig | None = None,
) -> AttackResult:
    """Rounds of restarts until a confirmed counterexample, the deadline or
    ``config.max_rounds``."""
    config = config or AttackConfig()
    started = time.monotonic()
    targets = Targets.of(polys)
    lo, hi = inner_box(box)
    which = np.repeat(np.arange(len(polys)), config.restarts)
    best = np.inf
    rounds = 0
    while rounds < config.max_rounds and time.monotonic() < deadline:
        rounds += 1
        x = _odi(net, lo, hi, rng, len(which), config.odi_steps, len(polys[0].A[0]))
        hit, margin = _descend(net, x, which, targets, lo, hi, confirm, deadline, config)
        best = min(best, margin)
        if hit is not None:
            xs, p = hit
            return AttackResult(xs, p, rounds, rounds * len(which), best, _since(started))
    return AttackResult(None, -1, rounds, rounds * len(which), best, _since(started))


def _since(started: float) -> float:
    return time.monotonic() - started


def _odi(
    net: Network,
    lo: np.ndarray,
    hi: np.ndarray,
    rng: np.random.Generator,
    n: int,
    steps: int,
    outputs: int,
) -> np.ndarray:
    """Random starts pushed towards random output directions (steps of half the width)."""
    x = (lo + rng.random((n, lo.size), dtype=np.float32) * (hi - lo)).astype(np.float32)
    w = rng.uniform(-1.0, 1.0, (n, outputs)).astype(np.float32)
    half = (hi - lo) / 2
    for _ in range(steps):
        _, _, g = forward_backward(net, x, lambda y: (y @ w[0], w))
        x = np.clip(x + half * np.sign(g), lo, hi)
    return x


def _descend(
    net: Network,
    x: np.ndarray,
    which: np.ndarray,
    targets: Targets,
    lo: np.ndarray,
    hi: np.ndarray,
    confirm: Confirm,
    deadline: float,
    config: AttackConfig,
) -> tuple[tuple[np.ndarray, int] | None, float]:
    """Sign-gradient descent of each point's margin with momentum; every float32-unsafe
    point is offered to ``confirm``.  Returns the confirmed hit and the best margin."""
    width = hi - lo
    prev = x.copy()
    best = np.inf
    tried: set[bytes] = set()
    for t in range(config.steps + 1):
        _, margin, g = forward_backward(net, x, lambda y: targets.margins(y, which))
        best = min(best, float(margin.min()))
        unsafe = np.flatnonzero(margin <= 0)
        for i in unsafe[np.argsort(margin[unsafe])][:CONFIRMS_PER_STEP]:
            key = x[i].tobytes()
            if key not in tried:
                tried.add(key)
                if confirm(x[i].copy(), int(which[i])):
                    return (x[i].copy(), int(which[i])), best
        if t == config.steps or time.monotonic() > deadline:
            break
        eta = width * (0.02 + 0.48 * (1 + np.cos(np.pi * t / config.steps)) / 2)
        z = np.clip(x - eta * np.sign(g), lo, hi)
        a = config.momentum if t > 0 else 1.0
        nxt = np.clip(x + a * (z - x) + (1 - a) * (x - prev), lo, hi)
        prev, x = x, nxt.astype(np.float32)
    return None, best
