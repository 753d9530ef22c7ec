"""ReLU splitting on the boxes input splitting leaves open (``leaf_split``).

A box it closes must have no input reaching the unsafe set (an exact MILP and
dense sampling agree); a counterexample it returns must be confirmed unsafe.
"""

from __future__ import annotations

import time

import numpy as np
from test_trial_split import small_net, unsafe

from relugate.compiler.spec import Polytope
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.leaf_split import close_leaves, prober, unstable_counts
from relugate.passes.analysis.milp import milp_find_any
from relugate.passes.analysis.relu_bab import root_bounds
from relugate.passes.analysis.steps import steps_of


def test_closed_boxes_are_safe_and_witnesses_unsafe() -> None:
    closed_any = found_any = False
    for seed in range(8):
        net = small_net(seed, depth=3, width=8)
        steps = steps_of(net)
        rng = np.random.default_rng(seed)
        lo = rng.uniform(-1, 0.5, (4, 3))
        hi = lo + rng.uniform(0.1, 0.6, (4, 3))
        y = net.forward(((lo + hi) / 2).astype(np.float32), np.float32).reshape(4, -1)
        # unsafe: y0 - y1 <= t, t near the centers' values so both verdicts occur
        t = float(np.median(y[:, 0] - y[:, 1])) + rng.uniform(-0.3, 0.1)
        poly = Polytope(np.array([[1.0, -1.0]]), np.array([t]))
        probe = prober(net, poly, lambda x: True)
        result = close_leaves(steps, lo, hi, poly, probe, time.monotonic() + 30, 64, 5.0)
        if result.witness is not None:
            found_any = True
            assert unsafe(net, result.witness[None], poly)[0]
        for i in np.flatnonzero(result.closed):
            closed_any = True
            root = root_bounds(steps, lo[[i]], hi[[i]])
            assert milp_find_any(steps, root, [(poly.A, poly.b)]).status == "infeasible"
            x = rng.uniform(lo[i], hi[i], (5000, 3))
            assert not unsafe(net, x, poly).any()
    assert closed_any and found_any


def test_boxes_with_too_many_unstable_relus_are_left_alone() -> None:
    net = small_net(1, depth=3, width=8)
    steps = steps_of(net)
    lo, hi = np.full((1, 3), -1.0), np.full((1, 3), 1.0)
    bounds = crown_bounds(steps, lo, hi)
    count = unstable_counts(steps, bounds.lo, bounds.hi)[0]
    assert count > 0
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([-1e6]))
    result = close_leaves(steps, lo, hi, poly, lambda x: None, time.monotonic() + 5, 0)
    assert result.tried == 0 and not result.closed.any()
