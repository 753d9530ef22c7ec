"""The wide-input path of ``verify_model``: the margin attack first, goals easiest first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_relu_bab import mlp, wide_net, wide_spec

from relugate.compiler.domain import Box
from relugate.compiler.spec import Case, Polytope
from relugate.compiler.verify import Goal, _easiest_first, verify_model
from relugate.passes.analysis.relu_bab import root_bounds
from relugate.passes.analysis.steps import steps_of


def test_a_sliver_violation_falls_to_the_margin_attack(tmp_path: Path) -> None:
    model, gap = wide_net(tmp_path)
    result = verify_model(model, [wide_spec(tmp_path, gap + 0.01)], timeout=60)
    assert result.verdict == "violated", result.to_json()
    assert result.method == "margin-pgd"
    assert result.counterexample is not None


def test_goals_are_taken_easiest_first() -> None:
    net = mlp(3, 20, [8, 8])
    steps = steps_of(net)
    box = Box(np.zeros(20), np.ones(20))
    root = root_bounds(steps, box.lo[None], box.hi[None])
    a = np.array([[1.0, -1.0]])
    polys = [Polytope(a, np.array([t])) for t in (0.0, -100.0, -10.0)]
    case = Case(box, tuple(polys))
    goals = [Goal(0, case, p) for p in polys]
    order = _easiest_first(goals, steps, root)
    assert [float(g.poly.b[0]) for g in order] == [-100.0, -10.0, 0.0]
