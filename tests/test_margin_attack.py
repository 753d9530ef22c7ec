"""The margin attack: finds counterexamples that exist, returns only confirmed ones."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_relu_bab import exact_output_gap, mlp

from relugate.compiler.domain import Box
from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.attack import sample_unsafe
from relugate.passes.analysis.margin_attack import (
    CONFIRMS_PER_STEP,
    AttackConfig,
    Targets,
    inner_box,
    margin_attack,
)
from relugate.passes.analysis.steps import steps_of

BOX = Box(np.zeros(20), np.ones(20))


@pytest.fixture(scope="module")
def sliver() -> tuple[Network, float]:
    """A 20-input net and the exact minimum of y0 - y1 over [0, 1]^20 (one MILP)."""
    net = mlp(5, 20, [16, 16])
    return net, exact_output_gap(steps_of(net), BOX)


def float32_unsafe(net, poly: Polytope):  # type: ignore[no-untyped-def]
    """A confirm callback that recomputes the output in float64 from the float32 input."""

    def confirm(x: np.ndarray, index: int) -> bool:
        y = net.forward(x[None].astype(np.float32), np.float32).astype(np.float64)
        return bool(poly.contains(y.reshape(1, -1))[0])

    return confirm


def test_finds_a_counterexample_just_below_the_true_minimum(sliver: tuple[Network, float]) -> None:
    """On a 20-input net the unsafe set {y0 - y1 <= gap + 0.01} is a sliver (gap: the
    exact minimum over the box by MILP): sampling misses it, the attack does not."""
    net, gap = sliver
    box = BOX
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([gap + 0.01]))
    rng = np.random.default_rng(0)
    assert sample_unsafe(net, box, [poly], rng, samples=2000) == [None]
    result = margin_attack(net, box, [poly], float32_unsafe(net, poly), rng, time.monotonic() + 30)
    assert result.x is not None and result.polytope == 0
    assert box.contains(result.x[None].astype(np.float64))[0]
    y = net.forward(result.x[None], np.float32).reshape(-1)
    assert y[0] - y[1] <= gap + 0.01
    assert result.best_margin <= 0


def test_an_unreachable_target_gives_nothing_and_a_positive_margin(
    sliver: tuple[Network, float],
) -> None:
    net, gap = sliver
    box = BOX
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([gap - 0.01]))
    config = AttackConfig(restarts=8, steps=20, max_rounds=2)
    result = margin_attack(
        net, box, [poly], float32_unsafe(net, poly), np.random.default_rng(0),
        time.monotonic() + 30, config,
    )  # fmt: skip
    assert result.x is None and result.polytope == -1
    assert result.rounds == 2 and result.points == 16
    assert 0 < result.best_margin <= 0.01 + 0.05  # close to the true minimum


def test_nothing_is_returned_unless_confirmed() -> None:
    """Every point is float32-unsafe (b is huge), but the checker rejects them all."""
    net = mlp(1, 20, [8])
    box = Box(np.zeros(20), np.ones(20))
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([1e6]))
    calls: list[int] = []

    def reject(x: np.ndarray, index: int) -> bool:
        calls.append(index)
        return False

    config = AttackConfig(restarts=8, steps=3, max_rounds=1)
    result = margin_attack(
        net, box, [poly], reject, np.random.default_rng(0), time.monotonic() + 30, config
    )
    assert result.x is None and calls and result.best_margin < 0
    assert len(calls) <= CONFIRMS_PER_STEP * (config.steps + 1) < 8 * (config.steps + 1)


def test_the_hit_names_the_reachable_polytope(sliver: tuple[Network, float]) -> None:
    """Three targets: two unreachable (beyond the exact minimum), one reachable."""
    net, gap = sliver
    box = BOX
    never = Polytope(np.array([[1.0, -1.0]]), np.array([gap - 0.5]))
    reach = Polytope(np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([gap + 0.05, 1.0]))
    polys = [never, reach, never]

    def confirm(x: np.ndarray, index: int) -> bool:
        return float32_unsafe(net, polys[index])(x, index)

    result = margin_attack(
        net, box, polys, confirm, np.random.default_rng(1), time.monotonic() + 30
    )
    assert result.polytope == 1 and result.x is not None


def test_targets_pad_rows_that_never_win() -> None:
    polys = [
        Polytope(np.array([[1.0, 0.0]]), np.array([0.0])),
        Polytope(np.array([[0.0, 1.0], [1.0, 1.0]]), np.array([0.0, 5.0])),
    ]
    targets = Targets.of(polys)
    y = np.array([[2.0, 3.0], [2.0, 3.0]], np.float32)
    margin, seed = targets.margins(y, np.array([0, 1]))
    assert margin.tolist() == [2.0, 3.0]
    assert seed.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_inner_box_stays_inside_a_box_that_float32_cannot_represent() -> None:
    box = Box(np.array([0.1, -0.3]), np.array([0.7, 1 / 3]))
    lo, hi = inner_box(box)
    assert lo.dtype == np.float32
    assert box.contains(np.stack([lo, hi]).astype(np.float64)).all()
    assert (np.nextafter(lo, np.float32(-1)) < box.lo).all()
    assert (np.nextafter(hi, np.float32(2)) > box.hi).all()
