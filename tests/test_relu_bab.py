"""ReLU-splitting branch and bound: beta gradients, bounds on branches, verdicts vs MILP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import assert_encloses, network, step_values
from conftest import save_model

from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.layers import Dense, Layer, Relu
from relugate.compiler.network import Network
from relugate.compiler.spec import Polytope
from relugate.compiler.verify import verify_model
from relugate.passes.analysis.alpha import _initial_alphas, evaluate
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.milp import milp_exact_bounds
from relugate.passes.analysis.relu_bab import (
    Domains,
    bound_domains,
    domain_bounds,
    relu_split,
    root_bounds,
    root_domain,
)
from relugate.passes.analysis.steps import Affine, ReluStep, Step, steps_of


def mlp(seed: int, n_in: int, hidden: list[int], n_out: int = 2) -> Network:
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    width = n_in
    for i, h in enumerate(hidden):
        w = rng.normal(0, 1 / np.sqrt(width), (h, width))
        layers += [Dense(f"d{i}", weight=w, bias=rng.normal(0, 0.3, h)), Relu(f"r{i}")]
        width = h
    out = Dense("o", weight=rng.normal(0, 1 / np.sqrt(width), (n_out, width)), bias=np.zeros(n_out))
    return network((n_in,), [*layers, out])


def random_branches(
    steps: list[Step], root: Domains, bounds_lo: dict[int, np.ndarray], count: int, seed: int
) -> Domains:
    """``count`` domains, each assuming random signs on a few unstable neurons."""
    rng = np.random.default_rng(seed)
    signs = {}
    for j, s in root.signs.items():
        unstable = (bounds_lo[j] < 0) & (root.hi[j] > 0)
        pick = (rng.random((count, s.shape[1])) < 0.3) & unstable
        signs[j] = np.where(pick, rng.choice([-1, 1], size=pick.shape), 0).astype(np.int8)
    return Domains(
        signs,
        {j: np.repeat(a, count, axis=0) for j, a in root.lo.items()},
        {j: np.repeat(a, count, axis=0) for j, a in root.hi.items()},
        0,
    )


def on_branch(values: list[np.ndarray], signs: dict[int, np.ndarray], d: int) -> np.ndarray:
    """Which sampled points satisfy domain ``d``'s sign assumptions."""
    keep = np.ones(len(values[0]), bool)
    for j, s in signs.items():
        z = values[j]
        keep &= np.all((s[d] <= 0) | (z >= 0), axis=1) & np.all((s[d] >= 0) | (z <= 0), axis=1)
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_branch_bounds_enclose_every_point_of_the_branch(seed: int) -> None:
    net = mlp(seed, 4, [10, 10])
    box = Box(-np.ones(4), np.ones(4))
    steps = steps_of(net)
    root = root_bounds(steps, box.lo[None], box.hi[None])
    start = root_domain(steps, root)
    domains = random_branches(steps, start, start.lo, 6, seed)
    bounds = domain_bounds(steps, root, domains)
    poly = Polytope(np.array([[1.0, -1.0], [0.5, 1.0]]), np.array([-5.0, -5.0]))
    result = bound_domains(steps, bounds, domains, poly, iterations=15)
    x = box.sample(40_000, np.random.default_rng(seed))
    values = step_values(net, x)
    checked = 0
    for d in range(domains.count):
        keep = on_branch(values, domains.signs, d)
        if keep.sum() < 10:
            continue
        assert_encloses(bounds, [v[keep] for v in values], box_index=d)
        y = values[-1][keep]
        best_row = (y @ poly.A.T - poly.b).min(axis=0).max()
        assert result.slack[d] <= best_row + 1e-9
        checked += 1
    assert checked >= 2


def test_beta_gradient_matches_finite_differences() -> None:
    net = mlp(3, 4, [8, 8])
    box = Box(-np.ones(4), np.ones(4))
    steps = steps_of(net)
    root = root_bounds(steps, box.lo[None], box.hi[None])
    start = root_domain(steps, root)
    domains = random_branches(steps, start, start.lo, 1, 7)
    bounds = domain_bounds(steps, root, domains)
    C = np.broadcast_to(np.array([[1.0, -1.0]]), (1, 1, 2))
    alphas = _initial_alphas(steps, bounds, 1)
    signs = {j: s.astype(float) for j, s in domains.signs.items()}
    rng = np.random.default_rng(0)
    betas = {j: rng.random((1, 1, s.shape[1])) * (s != 0)[:, None, :] for j, s in signs.items()}
    ev = evaluate(steps, bounds, C, alphas, None, betas, signs)
    checked = 0
    for j, s in signs.items():
        for n in np.flatnonzero(s[0])[:3]:
            bumped = {k: b.copy() for k, b in betas.items()}
            bumped[j][0, 0, n] += 1e-6
            moved = evaluate(steps, bounds, C, alphas, None, bumped, signs).value
            fd = (moved - ev.value)[0, 0] / 1e-6
            np.testing.assert_allclose(fd, ev.beta_grads[j][0, 0, n], rtol=1e-3, atol=1e-6)
            checked += 1
    assert checked > 0


def test_capped_rows_and_known_bounds_stay_sound() -> None:
    net = mlp(11, 3, [12, 12, 12])
    box = Box(-np.ones(3), np.ones(3))
    steps = steps_of(net)
    full = crown_bounds(steps, box.lo, box.hi)
    capped = crown_bounds(steps, box.lo, box.hi, max_rows=2)
    values = step_values(net, box.sample(20_000, np.random.default_rng(1)))
    assert_encloses(capped, values)
    relus = [k for k, s in enumerate(steps) if isinstance(s, ReluStep)]
    assert any((capped.width(k) > full.width(k) + 1e-12).any() for k in relus)
    known = {k: (full.lo[k], full.hi[k]) for k in relus}
    reused = crown_bounds(steps, box.lo, box.hi, known=known, max_rows=2, reuse_until=len(steps))
    assert_encloses(reused, values)
    for k in relus:
        assert np.all(reused.width(k) <= full.width(k) + 1e-12)


def exact_output_gap(steps: list[Step], box: Box) -> float:
    """min over the box of y0 - y1: one MILP on a net with y0 - y1 as its output."""
    diff = Dense("diff", weight=np.array([[1.0, -1.0]]), bias=np.zeros(1))
    with_diff = [*steps, Affine(diff, (2,), (1,))]
    bounds = crown_bounds(with_diff, box.lo, box.hi)
    exact = milp_exact_bounds(with_diff, bounds, [len(with_diff)])[len(with_diff)]
    assert exact.lower_optimal[0]
    return float(exact.lower[0])


@pytest.mark.parametrize("seed", range(3))
def test_verdicts_agree_with_milp_on_both_sides_of_the_true_minimum(seed: int) -> None:
    net = mlp(20 + seed, 6, [10, 10])
    box = Box(-np.ones(6), np.ones(6))
    steps = steps_of(net)
    gap = exact_output_gap(steps, box)
    root = root_bounds(steps, box.lo[None], box.hi[None])

    def probe(x: np.ndarray) -> np.ndarray | None:
        y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1)
        hit = np.flatnonzero(y[:, 0] - y[:, 1] <= threshold)
        return x[hit[0]] if hit.size else None

    for threshold, expected in ((gap - 0.1, "holds"), (gap + 0.1, "violated")):
        poly = Polytope(np.array([[1.0, -1.0]]), np.array([threshold]))
        result = relu_split(steps, root, poly, probe, time.monotonic() + 60)
        assert result.status == expected, (seed, gap, threshold)
        if expected == "violated":
            assert result.x is not None and box.contains(result.x[None])[0]


def wide_net(tmp_path: Path) -> tuple[Path, float]:
    """20 inputs (too many to split), and the exact min of y0 - y1 on [0, 1]^20."""
    net = mlp(5, 20, [8, 8])
    steps = steps_of(net)
    return save_model(to_onnx(net), tmp_path / "wide.onnx"), exact_output_gap(
        steps, Box(np.zeros(20), np.ones(20))
    )


def wide_spec(tmp_path: Path, threshold: float) -> Path:
    lines = [f"(declare-const X_{i} Real)" for i in range(20)]
    lines += ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    lines += [f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))" for i in range(20)]
    lines.append(f"(assert (<= Y_0 (+ Y_1 {threshold!r})))")
    path = tmp_path / "wide.vnnlib"
    path.write_text("\n".join(lines))
    return path


def test_verify_decides_a_wide_input_net(tmp_path: Path) -> None:
    model, gap = wide_net(tmp_path)
    held = verify_model(model, [wide_spec(tmp_path, gap - 0.02)], timeout=60)
    assert held.verdict == "holds", held.to_json()
    assert held.method == "milp"  # 16 unstable ReLUs: the MILP goes first
    violated = verify_model(model, [wide_spec(tmp_path, gap + 0.02)], timeout=60)
    assert violated.verdict == "violated", violated.to_json()
