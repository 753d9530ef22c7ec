"""Trial-split branching and the input-splitting search built on it.

The chosen dimension must be the one a brute-force check (bound each half of
each dimension on its own) says is best; the search's verdicts must agree
with an exact MILP and with dense sampling on small networks.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from analysis_helpers import network

from relugate.compiler.domain import Box
from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.attack import unsafe_margin
from relugate.passes.analysis.bab import bisect, input_split
from relugate.passes.analysis.crown import crown_bounds, spec_lower_bounds
from relugate.passes.analysis.milp import milp_find_any
from relugate.passes.analysis.relu_bab import root_bounds
from relugate.passes.analysis.row_mix import mixing_weights
from relugate.passes.analysis.steps import steps_of
from relugate.passes.analysis.trial_split import (
    best_dimension,
    candidate_dims,
    halves,
    score_boxes,
    starved,
    trial_split,
)


def small_net(seed: int, n_in: int = 3, width: int = 8, depth: int = 2, n_out: int = 2) -> Network:
    rng = np.random.default_rng(seed)
    layers: list[Dense | Relu] = []
    size = n_in
    for i in range(depth):
        layers.append(Dense(f"d{i}", rng.normal(0, 1, (width, size)), rng.normal(0, 0.3, width)))
        layers.append(Relu(f"r{i}"))
        size = width
    layers.append(Dense("out", rng.normal(0, 1, (n_out, size)), rng.normal(0, 0.3, n_out)))
    return network((n_in,), list(layers))


def unsafe(net: Network, x: np.ndarray, poly: Polytope) -> np.ndarray:
    y = net.forward(np.asarray(x, np.float32), np.float32).reshape(len(x), -1)
    return np.asarray(unsafe_margin(y.astype(np.float64), poly) <= 0)


def test_best_dimension_takes_the_best_worse_half() -> None:
    left = np.array([[1.0, -3.0, -1.0], [np.inf, -2.0, -5.0], [-1.0, np.inf, -1.0]])
    right = np.array([[-2.0, 5.0, -0.5], [-4.0, -2.0, np.inf], [np.inf, -1.0, -1.0]])
    # box 0: worse halves -2, -3, -1 -> dim 2; box 1: -4, -2, -5 -> dim 1;
    # box 2: a tie at -1 everywhere, broken by the better half (inf) -> dim 0
    widths = np.ones((3, 3))
    assert best_dimension(left, right, np.full(3, -10.0), widths).tolist() == [2, 1, 0]


def test_best_dimension_cuts_the_widest_candidate_when_no_cut_helps() -> None:
    left = right = np.array([[-1.0, -1.5, -1.0]])
    widths = np.array([[1e-6, 1.0, 0.5]])
    assert best_dimension(left, right, np.array([-1.0]), widths).tolist() == [1]
    assert best_dimension(left, right, np.array([-2.0]), widths).tolist() == [0]


def test_a_too_thin_input_is_starved() -> None:
    lo, hi = np.zeros((2, 2)), np.array([[1.0, 1 / 5000], [1.0, 1 / 1000]])
    assert starved(lo, hi, np.array([1, 1]), np.ones(2)).tolist() == [True, False]
    assert starved(lo, hi, np.array([1, 1]), np.array([1.0, 0.01])).tolist() == [False, False]


def test_candidate_dims_rank_by_coefficient_times_width() -> None:
    lo, hi = np.zeros((1, 4)), np.array([[1.0, 4.0, 1.0, 2.0]])
    coeffs = np.array([[3.0, -1.0, 0.5, -1.0]])  # influence 3, 4, 0.5, 2
    assert candidate_dims(lo, hi, coeffs, 2).tolist() == [[1, 0]]


def test_halves_cut_every_box_in_the_middle_of_every_dimension() -> None:
    lo = np.array([[0.0, -1.0], [2.0, 2.0]])
    hi = np.array([[1.0, 1.0], [4.0, 3.0]])
    c_lo, c_hi = halves(lo, hi, np.array([[0, 1], [0, 1]]))
    assert c_lo.shape == (8, 2)
    for box in range(2):
        for dim in range(2):
            row = box * 2 + dim
            e_lo, e_hi = bisect(lo[[box]], hi[[box]], np.array([dim]))
            assert np.array_equal(c_lo[[row, 4 + row]], e_lo)
            assert np.array_equal(c_hi[[row, 4 + row]], e_hi)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trial_split_picks_the_dimension_brute_force_says_is_best(seed: int) -> None:
    net = small_net(seed)
    steps = steps_of(net)
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([0.0]))  # unsafe: y0 <= y1
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, (6, 3))
    hi = lo + rng.uniform(0.2, 1.0, (6, 3))
    dims = np.tile(np.arange(3), (6, 1))
    kept_lo, kept_hi, scores = trial_split(steps, lo, hi, poly, dims, np.full(6, -1e9), np.ones(3))
    for box in range(6):
        worst = []
        for dim in range(3):
            h_lo, h_hi = bisect(lo[[box]], hi[[box]], np.array([dim]))
            s = score_boxes(steps, h_lo, h_hi, poly, alpha_iterations=0)
            worst.append(np.where(s.proved, np.inf, s.slack).min())
        chosen = int(np.flatnonzero(kept_hi[box] != hi[box])[0])
        assert worst[chosen] == max(worst)
        again = score_boxes(steps, kept_lo[[box, 6 + box]], kept_hi[[box, 6 + box]], poly)
        assert np.array_equal(again.proved, scores.proved[[box, 6 + box]])


def _poly(rng: np.random.Generator, rows: int) -> Polytope:
    """Unsafe: y_i - y_0 <= t_i for i = 1..rows ("y_0 is about the largest"), with
    thresholds drawn so that both verdicts occur."""
    A = np.zeros((rows, rows + 1))
    A[:, 0] = -1.0
    A[np.arange(rows), np.arange(1, rows + 1)] = 1.0
    return Polytope(A, rng.uniform(-1.0, 2.5, rows))


def test_input_split_agrees_with_milp_and_dense_sampling() -> None:
    verdicts = set()
    for seed in range(15):
        rng = np.random.default_rng(100 + seed)
        rows = 1 + seed % 3
        net = small_net(seed, width=10, n_out=rows + 1)
        steps = steps_of(net)
        box = Box(np.full(3, -1.0), np.full(3, 1.0))
        poly = _poly(rng, rows)
        result = input_split(
            net,
            steps,
            box,
            poly,
            lambda x: True,
            time.monotonic() + 30,
        )
        root = root_bounds(steps, box.lo[None], box.hi[None])
        exact = milp_find_any(steps, root, [(poly.A, poly.b)], time_limit=30)
        samples = box.sample(20_000, rng)
        if result.status == "holds":
            assert exact.status == "infeasible", seed
            assert not unsafe(net, samples, poly).any(), seed
        else:
            assert result.status == "violated"
            assert result.x is not None and box.contains(result.x)[0]
            assert unsafe(net, result.x[None], poly)[0], seed
        verdicts.add(result.status)
    assert verdicts == {"holds", "violated"}


def test_a_thin_violation_is_found_and_a_near_miss_agrees_with_milp() -> None:
    """Thresholds just above the lowest sampled ``y0 - y1`` (a violation exists) and
    just below it (the MILP decides)."""
    net = small_net(7, width=10)
    steps = steps_of(net)
    box = Box(np.full(3, -1.0), np.full(3, 1.0))
    x = np.concatenate([box.corners_and_center(), box.sample(50_000, np.random.default_rng(0))])
    y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1).astype(np.float64)
    low = float((y[:, 0] - y[:, 1]).min())
    root = root_bounds(steps, box.lo[None], box.hi[None])
    for offset in (0.02, -0.05):
        poly = Polytope(np.array([[1.0, -1.0]]), np.array([low + offset]))
        result = input_split(net, steps, box, poly, lambda x: True, time.monotonic() + 60)
        exact = milp_find_any(steps, root, [(poly.A, poly.b)], time_limit=30)
        expected = "holds" if exact.status == "infeasible" else "violated"
        assert result.status == expected, (offset, result)
        if offset > 0:
            assert result.status == "violated"


def test_mixing_weights_combine_two_rows_that_win_on_different_sides() -> None:
    # slack_1(x) = x + 0.1, slack_2(x) = -x + 0.1 on [-1, 1]: each alone dips to -0.9
    slack = np.array([[-0.9, -0.9]])
    coeffs = np.array([[[1.0], [-1.0]]])
    lam, value = mixing_weights(slack, coeffs, np.array([[-1.0]]), np.array([[1.0]]))
    assert np.allclose(lam, [[0.5, 0.5]]) and np.isclose(value[0], 0.1)


def test_a_mixed_row_proves_a_box_no_single_row_proves() -> None:
    """y = (x, -x) through a ReLU layer; unsafe: y0 <= -0.1 and y1 <= -0.1 (empty)."""
    net = network(
        (1,),
        [
            Dense("d", np.array([[1.0], [-1.0]]), np.zeros(2)),
            Relu("r"),
            Dense("o", np.array([[1.0, -1.0], [-1.0, 1.0]]), np.zeros(2)),
        ],
    )
    steps = steps_of(net)
    poly = Polytope(np.eye(2), np.array([-0.1, -0.1]))
    lo, hi = np.array([[-1.0]]), np.array([[1.0]])
    rows, _ = spec_lower_bounds(steps, crown_bounds(steps, lo, hi), poly.A)
    assert (rows - poly.b < 0).all()
    assert score_boxes(steps, lo, hi, poly).proved[0]
