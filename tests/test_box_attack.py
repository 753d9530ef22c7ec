"""Batched projected descent inside boxes: candidates are unsafe and inside their box."""

from __future__ import annotations

import numpy as np
from analysis_helpers import network

from relugate.compiler.layers import Dense, Relu
from relugate.compiler.spec import Polytope
from relugate.passes.analysis.attack import unsafe_margin
from relugate.passes.analysis.box_attack import descend_in_boxes


def test_descent_reaches_an_unsafe_corner_region_from_the_other_corner() -> None:
    # y = relu(x0 + x1): unsafe when y >= 1.8, i.e. only near the corner (1, 1)
    net = network((2,), [Dense("d", np.array([[1.0, 1.0]]), np.zeros(1)), Relu("r")])
    poly = Polytope(np.array([[-1.0]]), np.array([-1.8]))
    lo = np.array([[0.0, 0.0], [-1.0, -1.0]])
    hi = np.array([[1.0, 1.0], [0.5, 0.5]])
    start = np.array([[0.1, 0.1], [-1.0, -1.0]])
    found = descend_in_boxes(net, poly, start, lo, hi)
    assert len(found) > 0
    y = net.forward(found.astype(np.float32), np.float32).reshape(len(found), -1)
    assert (unsafe_margin(y.astype(np.float64), poly) <= 0).all()
    # every candidate lies in the first box: the second one has no unsafe point
    assert ((found >= lo[0]) & (found <= hi[0])).all()
