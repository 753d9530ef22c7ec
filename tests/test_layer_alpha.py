"""Intermediate bounds tightened by optimized slopes (``layer_alpha``) and their use
in input splitting.

The tightened bounds must enclose every float32 execution from the box (checked
on samples), never be looser than CROWN's, never be tighter than the exact
(MILP) neuron ranges, and be strictly tighter somewhere on deep random nets.
The search with tightening switched on from the start must still agree with
an exact MILP.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from analysis_helpers import assert_encloses, step_values
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trial_split import _poly, small_net, unsafe

from relugate.compiler.domain import Box
from relugate.compiler.spec import Polytope
from relugate.passes.analysis import bab
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.layer_alpha import relaxed_relus, tighten_layers
from relugate.passes.analysis.milp import milp_exact_bounds, milp_find_any
from relugate.passes.analysis.relu_bab import root_bounds
from relugate.passes.analysis.steps import steps_of
from relugate.passes.analysis.trial_split import depth, trial_split


def _boxes(seed: int, count: int, n_in: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0.5, (count, n_in))
    return lo, lo + rng.uniform(0.05, 1.0, (count, n_in))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(2, 4))
def test_tightened_bounds_enclose_float32_runs_and_never_loosen(seed: int, layers: int) -> None:
    net = small_net(seed, depth=layers)
    steps = steps_of(net)
    lo, hi = _boxes(seed, 4)
    plain = crown_bounds(steps, lo, hi)
    tight = tighten_layers(steps, plain, iterations=5)
    rng = np.random.default_rng(seed)
    for box in range(len(lo)):
        x = rng.uniform(lo[box], hi[box], (3000, 3))
        x = np.concatenate([x, Box(lo[box], hi[box]).corners_and_center()])
        assert_encloses(tight, step_values(net, x), box)
    for k in range(len(plain.lo)):
        assert np.all(tight.lo[k] >= plain.lo[k]) and np.all(tight.hi[k] <= plain.hi[k])


@pytest.mark.parametrize("seed", [3, 4])
def test_tightened_bounds_are_never_inside_the_exact_ranges(seed: int) -> None:
    """Per neuron of every relaxed ReLU's input: tightened lower <= MILP minimum and
    tightened upper >= MILP maximum (up to HiGHS's tolerance)."""
    net = small_net(seed, depth=3, width=8)
    steps = steps_of(net)
    lo, hi = _boxes(seed, 1)
    tight = tighten_layers(steps, crown_bounds(steps, lo, hi), iterations=10)
    layers = relaxed_relus(steps)
    exact = milp_exact_bounds(steps, tight, layers, time_limit_per_neuron=10)
    for k in layers:
        eb = exact[k]
        tol = 1e-6 * (1 + np.abs(eb.lower))
        assert np.all(tight.lo[k][0] <= eb.lower + tol), k
        assert np.all(tight.hi[k][0] >= eb.upper - tol), k


def test_tightening_gains_on_deep_nets() -> None:
    gained = 0.0
    for seed in range(6):
        net = small_net(seed, depth=4, width=12)
        steps = steps_of(net)
        lo, hi = _boxes(seed, 8)
        plain = crown_bounds(steps, lo, hi)
        tight = tighten_layers(steps, plain)
        k = relaxed_relus(steps)[-1]
        gained += float((plain.width(k) - tight.width(k)).sum())
    assert gained > 0


def test_deepened_trial_split_keeps_the_same_children_and_only_gains_slack() -> None:
    net = small_net(5, depth=4, width=12)
    steps = steps_of(net)
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([0.0]))
    lo, hi = _boxes(5, 8)
    dims = np.tile(np.arange(3), (8, 1))
    args = (steps, lo, hi, poly, dims, np.full(8, -1e9), np.ones(3))
    p_lo, p_hi, plain = trial_split(*args)
    d_lo, d_hi, deep = trial_split(*args, deepen_from=0.0)
    assert np.array_equal(p_lo, d_lo) and np.array_equal(p_hi, d_hi)
    assert np.all(deep.slack >= plain.slack)
    assert np.all(deep.proved >= plain.proved)


def test_depth_counts_halvings_and_ignores_zero_width_inputs() -> None:
    lo, hi = np.array([[0.0, 0.0, 1.0]]), np.array([[0.25, 1.0, 1.0]])
    assert depth(lo, hi, np.array([1.0, 2.0, 1.0])).tolist() == [3.0]


def test_input_split_with_tightening_from_the_start_agrees_with_milp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bab, "DEEPEN_AFTER", 0)
    monkeypatch.setattr(bab, "DEEPEN_FROM", 1.0)
    verdicts = set()
    for seed in range(10):
        rng = np.random.default_rng(200 + seed)
        rows = 1 + seed % 3
        net = small_net(seed, width=10, depth=3, n_out=rows + 1)
        steps = steps_of(net)
        box = Box(np.full(3, -1.0), np.full(3, 1.0))
        poly = _poly(rng, rows)
        result = bab.input_split(net, steps, box, poly, lambda x: True, time.monotonic() + 30)
        root = root_bounds(steps, box.lo[None], box.hi[None])
        exact = milp_find_any(steps, root, [(poly.A, poly.b)], time_limit=30)
        if result.status == "holds":
            assert exact.status == "infeasible", seed
            assert not unsafe(net, box.sample(20_000, rng), poly).any(), seed
        else:
            assert result.status == "violated", seed
            assert result.x is not None and unsafe(net, result.x[None], poly)[0], seed
        verdicts.add(result.status)
    assert verdicts == {"holds", "violated"}
