"""LP bound tightening, exact MILP bounds and stability, and MILP counterexample search.

Bounds are checked against dense float32 sampling of small random networks;
MILP optima against the forward evaluation of the inputs the solver returns
(an optimum must be reached) and against sampling (nothing may beat it).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import assert_encloses, network, step_values
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.optimize import linprog

from relugate.compiler.domain import Box
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale
from relugate.compiler.network import Network
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.lp_encoding import Encoding, encode, forward_steps, safe_lower_bound
from relugate.passes.analysis.milp import (
    exact_stability,
    exact_stability_all,
    lp_tighten,
    lp_tighten_report,
    milp_exact_bounds,
    milp_find,
    milp_find_any,
    relu_stability,
)
from relugate.passes.analysis.steps import ReluStep, Step, steps_of

# --- helpers -------------------------------------------------------------------------


def mlp(sizes: list[int], seed: int, scale: float = 1.0) -> Network:
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = rng.normal(0, scale / np.sqrt(a), (b, a))
        layers.append(Dense(f"d{i}", weight=w, bias=rng.normal(0, 0.3, b)))
        if i < len(sizes) - 2:
            layers.append(Relu(f"r{i}"))
    return network((sizes[0],), layers)


def cnn(seed: int) -> Network:
    """Scale, Conv, ReLU, MaxPool, Flatten, Dense, ReLU, Dense on a 1x4x4 input."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [
        Scale("norm", mul=rng.uniform(0.5, 2, (1, 1, 1)), add=rng.normal(0, 0.3, (1, 1, 1))),
        Conv("c", weight=rng.normal(0, 0.6, (2, 1, 2, 2)), bias=rng.normal(0, 0.2, 2),
             strides=(1, 1), pads=(0, 0, 1, 1), dilations=(1, 1)),
        Relu("r"),
        MaxPool("p", kernel=(2, 2), strides=(2, 2), pads=(1, 1, 0, 0), dilations=(1, 1)),
        Reshape("f", shape=(8,)),
        Dense("d", weight=rng.normal(0, 0.5, (4, 8)), bias=rng.normal(0, 0.2, 4)),
        Relu("r2"),
        Dense("o", weight=rng.normal(0, 0.5, (2, 4)), bias=rng.normal(0, 0.2, 2)),
    ]  # fmt: skip
    return network((1, 4, 4), layers)


def random_box(n: int, seed: int, radius: float = 0.5) -> Box:
    rng = np.random.default_rng(seed + 1000)
    center = rng.normal(0, 1, n)
    r = rng.uniform(0.2, 1.0, n) * radius
    return Box(center - r, center + r)


def samples(box: Box, n: int, seed: int = 0) -> np.ndarray:
    """Uniform points plus every corner (when few) and the center."""
    pts = [box.sample(n, np.random.default_rng(seed)), box.corners_and_center()]
    if box.dim <= 10:
        pts.append(np.array(list(itertools.product(*zip(box.lo, box.hi, strict=True)))))
    return np.concatenate(pts)


def assert_not_looser(tight: Bounds, loose: Bounds) -> None:
    for k in range(len(loose.lo)):
        assert np.all(tight.lo[k][0] >= loose.lo[k][0])
        assert np.all(tight.hi[k][0] <= loose.hi[k][0])


def setup(net: Network, box: Box) -> tuple[list[Step], Bounds]:
    steps = steps_of(net)
    return steps, crown_bounds(steps, box.lo, box.hi)


# --- rigorous LP bounds ------------------------------------------------------------


def test_safe_lower_bound_holds_for_any_multipliers() -> None:
    rng = np.random.default_rng(3)
    n, m_ub, m_eq = 12, 8, 3
    A_ub, A_eq = rng.normal(size=(m_ub, n)), rng.normal(size=(m_eq, n))
    x0 = rng.uniform(-1, 1, n)  # a feasible point
    enc = Encoding(
        sparse.csr_array(A_eq), A_eq @ x0,
        sparse.csr_array(A_ub), A_ub @ x0 + rng.uniform(0, 1, m_ub),
        -np.ones(n) * 2, np.ones(n) * 2, np.zeros(n, int), [np.arange(n)],
    )  # fmt: skip
    c = rng.normal(size=n)
    res = linprog(c, A_ub=A_ub, b_ub=enc.b_ub, A_eq=A_eq, b_eq=enc.b_eq,
                  bounds=np.stack([enc.lb, enc.ub], 1), method="highs")  # fmt: skip
    assert res.status == 0
    tight = safe_lower_bound(enc, c, res.ineqlin.marginals, res.eqlin.marginals)
    assert tight <= res.fun and res.fun - tight < 1e-6
    for _ in range(20):  # any multipliers (of either sign: the positive part is clipped)
        y_ub, y_eq = rng.normal(size=m_ub), rng.normal(size=m_eq)
        assert safe_lower_bound(enc, c, y_ub, y_eq) <= res.fun + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_tighten_encloses_float32_samples_and_beats_crown(seed: int) -> None:
    net = mlp([3, 10, 10, 8, 2], seed)
    box = random_box(3, seed)
    steps, crown = setup(net, box)
    report = lp_tighten_report(steps, crown, time_limit=20)
    assert report.complete and report.bounds.method == "lp"
    assert report.stable_after >= report.stable_before
    assert_not_looser(report.bounds, crown)
    assert_encloses(report.bounds, step_values(net, samples(box, 20_000, seed)))
    widths = [np.sum(report.bounds.width(k)) < np.sum(crown.width(k)) for k in range(len(steps))]
    assert any(widths), "the LP should tighten something on a 3-layer net"


def test_lp_tighten_on_a_cnn_with_maxpool() -> None:
    net = cnn(5)
    box = random_box(16, 5, radius=0.6)
    steps, crown = setup(net, box)
    tight = lp_tighten(steps, crown, time_limit=20)
    assert_not_looser(tight, crown)
    assert_encloses(tight, step_values(net, samples(box, 20_000)))


def test_lp_tighten_picks_one_box_and_respects_the_time_limit() -> None:
    net = mlp([4, 30, 30, 30, 3], 7)
    steps = steps_of(net)
    lo = np.stack([-np.ones(4), np.zeros(4)])
    crown = crown_bounds(steps, lo, lo + 1.0)
    tight = lp_tighten(steps, crown, box_index=1)
    assert tight.boxes == 1
    assert_encloses(tight, step_values(net, samples(Box(np.zeros(4), np.ones(4)), 5000)))
    t0 = time.perf_counter()
    report = lp_tighten_report(steps, crown, time_limit=0.05)
    assert time.perf_counter() - t0 < 2.0
    assert not report.complete
    assert_not_looser(
        report.bounds, Bounds([a[:1] for a in crown.lo], [a[:1] for a in crown.hi], "")
    )


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    sizes=st.lists(st.integers(1, 6), min_size=3, max_size=5),
    radius=st.floats(0.01, 2.0),
)
def test_lp_tighten_is_sound_on_random_tiny_nets(
    seed: int, sizes: list[int], radius: float
) -> None:
    net = mlp(sizes, seed, scale=2.0)
    box = random_box(sizes[0], seed, radius)
    steps, crown = setup(net, box)
    tight = lp_tighten(steps, crown, time_limit=20)
    assert_not_looser(tight, crown)
    assert_encloses(tight, step_values(net, samples(box, 3000, seed)))


# --- exact bounds and stability ------------------------------------------------------


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_milp_exact_bounds_are_reached_and_never_beaten(which: str) -> None:
    if which == "mlp":
        net, box = mlp([2, 8, 8, 3], 11, scale=1.5), random_box(2, 11, 1.0)
    else:
        net, box = cnn(12), random_box(16, 12, 0.5)
    steps, crown = setup(net, box)
    k_relu = max(k for k, s in enumerate(steps) if isinstance(s, ReluStep))
    layers = [k_relu, len(steps)]
    exact = milp_exact_bounds(steps, crown, layers, time_limit_per_neuron=20)
    values = step_values(net, samples(box, 100_000), np.float64)
    for k in layers:
        eb = exact[k]
        assert eb.lower_optimal.all() and eb.upper_optimal.all()
        scale = 1 + np.abs(eb.lower) + np.abs(eb.upper)
        assert np.all(values[k] >= eb.lower - 1e-6 * scale)
        assert np.all(values[k] <= eb.upper + 1e-6 * scale)
        reached_lo = step_values(net, eb.argmin, np.float64)[k].diagonal()
        reached_hi = step_values(net, eb.argmax, np.float64)[k].diagonal()
        assert np.allclose(reached_lo, eb.lower, atol=1e-5 * scale.max())
        assert np.allclose(reached_hi, eb.upper, atol=1e-5 * scale.max())
        # the exact range lies within the sound bounds
        assert np.all(eb.lower >= crown.lo[k][0] - 1e-9) and np.all(
            eb.upper <= crown.hi[k][0] + 1e-9
        )
        if which == "mlp":  # 2 inputs: dense sampling finds the extremes too
            assert np.allclose(values[k].min(0), eb.lower, atol=0.02 * scale.max())
            assert np.allclose(values[k].max(0), eb.upper, atol=0.02 * scale.max())


@pytest.mark.parametrize("seed", [21, 22])
def test_exact_stability_agrees_with_brute_force(seed: int) -> None:
    net, box = mlp([2, 10, 10, 10, 2], seed, scale=1.5), random_box(2, seed, 1.0)
    steps, crown = setup(net, box)
    values = step_values(net, samples(box, 100_000, seed), np.float64)
    relus = [k for k, s in enumerate(steps) if isinstance(s, ReluStep)]
    for k in relus:
        st_ = exact_stability(steps, crown, k, samples=64, time_limit_per_query=20)
        pre = values[k]
        assert np.all(pre[:, st_.labels == "inactive"] <= 1e-9)
        assert np.all(pre[:, st_.labels == "active"] >= -1e-9)
        assert not np.any(st_.labels == "unknown")
        both = np.flatnonzero(st_.labels == "both")
        assert st_.confirmed[both].all()
        pos = forward_steps(steps, st_.pos_witness[both])[k]
        neg = forward_steps(steps, st_.neg_witness[both])[k]
        assert np.all(pos[np.arange(len(both)), both] > 0)
        assert np.all(neg[np.arange(len(both)), both] < 0)
        assert np.all(box.contains(st_.pos_witness[both], tol=1e-6))
        # every unit the samples see fire both ways is labelled "both"
        seen_both = (pre.max(0) > 1e-9) & (pre.min(0) < -1e-9)
        assert np.all(st_.labels[seen_both] == "both")
        # and the crown-stable ones are kept
        assert np.all(st_.labels[crown.lo[k][0] >= 0] == "active")
        # without sampling, every witness comes from a MILP solution
        alone = exact_stability(steps, crown, k, samples=0, time_limit_per_query=20)
        assert np.array_equal(alone.labels, st_.labels)
        assert alone.confirmed[alone.labels == "both"].all()
    labels, exact_bounds = exact_stability_all(steps, crown, time_limit_per_query=20)
    assert sorted(labels) == relus
    exact_stable = sum(int(np.sum(lab.labels != "both")) for lab in labels.values())
    assert exact_stable >= relu_stability(steps, crown)["stable"]
    assert_encloses(exact_bounds, values)


def test_exact_stability_finds_a_dead_unit_crown_calls_unstable() -> None:
    """v = 2 relu(a) - relu(a + b) - relu(a - b) - 0.01 <= -0.01 (as relu(t) >= t), but
    CROWN relaxes relu(a + b) on [-3, 2] by 0 from below and cannot see it."""
    layers: list[Layer] = [
        Dense("h", weight=np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]), bias=np.zeros(3)),
        Relu("r0"),
        Dense("v", weight=np.array([[-1.0, -1.0, 2.0]]), bias=np.array([-0.01])),
        Relu("r1"),
        Dense("o", weight=np.ones((1, 1)), bias=np.zeros(1)),
    ]
    net = network((2,), layers)
    box = Box(np.array([0.0, -3.0]), np.array([1.0, 1.0]))
    steps, crown = setup(net, box)
    k = 3
    assert crown.lo[k][0, 0] < 0 < crown.hi[k][0, 0]
    assert step_values(net, samples(box, 100_000), np.float64)[k].max() < 0
    st_ = exact_stability(steps, crown, k, samples=0)
    assert st_.labels[0] == "inactive" and st_.decided_by[0] == "milp"
    tight = lp_tighten(steps, crown)  # the triangle relaxation keeps relu(t) >= t
    assert tight.hi[k][0, 0] <= 0


def test_float32_rounding_is_part_of_the_encoding() -> None:
    """1e8 x0 + x1 - 1e8 x2 + 0.1 is < 0 in exact arithmetic on the box, but float32
    may round x1 away; bounds, labels and searches must allow the float32 values."""
    layers: list[Layer] = [
        Dense("d", weight=np.array([[1e8, 1.0, -1e8]]), bias=np.array([0.1])),
        Relu("r"),
        Dense("o", weight=np.ones((1, 1)), bias=np.zeros(1)),
    ]
    net = network((3,), layers)
    box = Box(np.array([1.0, -3.0, 1.0]), np.array([1.0, -0.5, 1.0]))
    steps, crown = setup(net, box)
    xs = samples(box, 1000)
    assert step_values(net, xs, np.float64)[1].max() < 0  # never fires in exact arithmetic
    assert exact_stability(steps, crown, 1, samples=0).labels[0] == "both"
    assert_encloses(lp_tighten(steps, crown), step_values(net, xs))
    upper = milp_exact_bounds(steps, crown, [1])[1].upper[0]
    assert upper >= step_values(net, xs)[1].max() and upper > 0
    assert milp_find(steps, crown, np.array([[-1.0]]), np.array([-0.05])).status == "feasible"
    exact_real = encode(steps, crown, margins=False)  # without margins: exact arithmetic
    assert exact_real.n_vars < encode(steps, crown).n_vars


# --- counterexample search ---------------------------------------------------------


def test_milp_find_decides_held_and_violated_properties() -> None:
    net, box = mlp([3, 12, 12, 2], 31, scale=1.5), random_box(3, 31)
    steps, crown = setup(net, box)
    exact = milp_exact_bounds(steps, crown, [len(steps)], time_limit_per_neuron=20)[len(steps)]
    top = exact.upper[0]
    A = np.array([[-1.0, 0.0]])  # unsafe: y0 >= threshold
    held = milp_find(steps, crown, A, np.array([-(top + 0.05)]), time_limit=20)
    assert held.status == "infeasible" and held.x is None
    threshold = top - 0.1 * (exact.upper[0] - exact.lower[0])
    found = milp_find(steps, crown, A, np.array([-threshold]), time_limit=20)
    assert found.status == "feasible" and found.x is not None
    assert box.contains(found.x, tol=1e-6)[0]
    y = net.forward(np.clip(found.x, box.lo, box.hi), np.float64).reshape(-1)
    assert y[0] >= threshold - 1e-6
    # a disjunction: the first polytope is impossible, the second reachable
    either = milp_find_any(
        steps, crown, [(A, np.array([-(top + 1.0)])), (A, np.array([-threshold]))]
    )
    assert either.status == "feasible" and either.polytope == 1


def test_milp_find_and_exact_stability_respect_time_limits() -> None:
    net, box = mlp([5, 50, 50, 50, 50, 5], 41, scale=2.0), random_box(5, 41, 3.0)
    steps, crown = setup(net, box)
    A = np.array([[-1.0, 1.0, 0, 0, 0], [-1.0, 0, 1.0, 0, 0]])
    t0 = time.perf_counter()
    result = milp_find(steps, crown, A, np.array([-50.0, -50.0]), time_limit=0.5)
    assert time.perf_counter() - t0 < 5.0
    assert result.status in {"timeout", "infeasible", "feasible"}
    t0 = time.perf_counter()
    labels = exact_stability(steps, crown, 5, samples=16, time_limit=0.5)
    assert time.perf_counter() - t0 < 5.0
    assert set(labels.labels) <= {"active", "inactive", "both", "unknown"}


def benchmark_case(benchmarks: Path, onnx: str, vnnlib: str) -> tuple[Network, list[Step], object]:
    net = import_network(load_model(benchmarks / onnx))
    return net, steps_of(net), read_vnnlib(benchmarks / vnnlib)


@pytest.mark.benchmarks
@pytest.mark.parametrize("name", ["test_tiny", "test_small"])
def test_milp_find_on_vnncomp_test_instances(benchmarks: Path, name: str) -> None:
    folder = benchmarks / "vnncomp2021_test"
    net = import_network(load_model(folder / f"{name}.onnx"))
    steps = steps_of(net)
    prop = read_vnnlib(folder / f"{name}.vnnlib")
    for case in prop.cases:
        bounds = crown_bounds(steps, case.box.lo, case.box.hi)
        ys = net.forward(samples(case.box, 20_000), np.float32).reshape(-1, prop.n_outputs)
        for poly in case.unsafe:
            result = milp_find(steps, bounds, poly.A, poly.b, time_limit=20)
            if poly.contains(ys).any():
                assert result.status == "feasible"
            else:  # both instances hold: the MILP must prove it
                assert result.status == "infeasible"


@pytest.mark.benchmarks
def test_milp_find_on_acas_sized_test_sat(benchmarks: Path) -> None:
    folder = benchmarks / "vnncomp2021_test"
    net = import_network(load_model(folder / "test_sat.onnx"))
    steps = steps_of(net)
    case = read_vnnlib(folder / "test_prop.vnnlib").cases[0]
    bounds = crown_bounds(steps, case.box.lo, case.box.hi)
    results = [milp_find(steps, bounds, p.A, p.b, time_limit=30) for p in case.unsafe]
    hits = [r for r in results if r.status == "feasible"]
    assert hits, [r.status for r in results]
    x = hits[0].x
    assert x is not None and case.box.contains(x, tol=1e-6)[0]
    assert case.is_unsafe(net.forward(x, np.float64), tol=1e-4)[0]


@pytest.mark.slow
@pytest.mark.benchmarks
def test_acas_property_1_net_1_1(benchmarks: Path) -> None:
    """Property 1 holds on net 1_1; the full-box MILP is hard for HiGHS (it timed out
    at 120 s when measured), so only soundness is checked: no false counterexample."""
    folder = benchmarks / "acasxu"
    net = import_network(load_model(folder / "ACASXU_run2a_1_1_batch_2000.onnx"))
    steps = steps_of(net)
    case = read_vnnlib(folder / "prop_1.vnnlib").cases[0]
    bounds = lp_tighten(steps, crown_bounds(steps, case.box.lo, case.box.hi), time_limit=60)
    assert_encloses(bounds, step_values(net, samples(case.box, 20_000)))
    poly = case.unsafe[0]
    t0 = time.perf_counter()
    result = milp_find(steps, bounds, poly.A, poly.b, time_limit=30)
    assert time.perf_counter() - t0 < 45
    assert result.status in {"infeasible", "timeout"}


@pytest.mark.slow
@pytest.mark.benchmarks
def test_acas_property_3_net_1_1_is_proved(benchmarks: Path) -> None:
    folder = benchmarks / "acasxu"
    net = import_network(load_model(folder / "ACASXU_run2a_1_1_batch_2000.onnx"))
    steps = steps_of(net)
    case = read_vnnlib(folder / "prop_3.vnnlib").cases[0]
    bounds = lp_tighten(steps, crown_bounds(steps, case.box.lo, case.box.hi), time_limit=60)
    poly = case.unsafe[0]
    assert milp_find(steps, bounds, poly.A, poly.b, time_limit=120).status == "infeasible"


def test_encoding_layer_vars_and_modes() -> None:
    net = cnn(3)
    steps, crown = setup(net, random_box(16, 3))
    lp, mip = encode(steps, crown, mode="lp"), encode(steps, crown, mode="milp")
    assert lp.integrality.sum() == 0 and mip.integrality.sum() > 0
    assert len(mip.layer_vars) == len(steps) + 1
    assert np.all(mip.layer_vars[0] == np.arange(16))  # inputs come first
    assert np.all(mip.layer_vars[1] == -1)  # Scale is composed with the Conv after it
    with pytest.raises(ValueError):
        encode(steps, crown, mode="sat")
