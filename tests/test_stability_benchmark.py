"""Stability by input splitting (``split_stability``) and the stability benchmark:
union bounds over sub-boxes enclose every float32 execution, are never looser than
CROWN on the whole box, and the benchmark runs end to end on one ACAS Xu pair."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from analysis_helpers import assert_encloses, network, step_values
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import stability as bench
from relugate.compiler.domain import Box
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Dense, Layer, Relu
from relugate.compiler.network import Network
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.milp import relu_stability
from relugate.passes.analysis.split_stability import split_bounds
from relugate.passes.analysis.steps import ReluStep, steps_of


@st.composite
def small_mlps(draw: st.DrawFn) -> tuple[Network, Box]:
    """A random MLP on 1 to 4 inputs and a box around a random center."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    sizes = [draw(st.integers(1, 4)), *draw(st.lists(st.integers(2, 10), min_size=2, max_size=4))]
    layers: list[Layer] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(Dense(f"d{i}", weight=rng.normal(0, 1, (b, a)), bias=rng.normal(0, 0.5, b)))
        if i < len(sizes) - 2:
            layers.append(Relu(f"r{i}"))
    center = rng.normal(0, 1, sizes[0])
    radius = rng.uniform(0.01, 1.0, sizes[0])
    return network((sizes[0],), layers), Box(center - radius, center + radius)


@settings(max_examples=30, deadline=None)
@given(small_mlps())
def test_split_bounds_enclose_float32_samples(case: tuple[Network, Box]) -> None:
    net, box = case
    steps = steps_of(net)
    result = split_bounds(steps, box.lo, box.hi, max_boxes=32, samples=50)
    x = np.concatenate([box.corners_and_center(), box.sample(3000, np.random.default_rng(1))])
    assert_encloses(result.bounds, step_values(net, x))
    crown = crown_bounds(steps, box.lo, box.hi)
    for k in range(len(steps) + 1):  # intersected with CROWN on the whole box
        assert np.all(result.bounds.lo[k] >= crown.lo[k])
        assert np.all(result.bounds.hi[k] <= crown.hi[k])
    assert 1 <= result.boxes <= 32


def test_split_never_claims_a_sign_a_sample_contradicts() -> None:
    rng = np.random.default_rng(3)
    layers: list[Layer] = [Dense("d0", weight=rng.normal(0, 1, (30, 3)), bias=rng.normal(0, 1, 30))]
    layers += [Relu("r0"), Dense("d1", weight=rng.normal(0, 0.4, (30, 30)), bias=np.zeros(30))]
    net = network(
        (3,), [*layers, Relu("r1"), Dense("o", weight=np.ones((1, 30)), bias=np.zeros(1))]
    )
    box = Box(-np.ones(3), np.ones(3))
    steps = steps_of(net)
    bounds = split_bounds(steps, box.lo, box.hi, max_boxes=128).bounds
    values = step_values(net, box.sample(20_000, rng))
    crown_stable = relu_stability(steps, crown_bounds(steps, box.lo, box.hi))["stable"]
    assert relu_stability(steps, bounds)["stable"] > crown_stable
    for k, step in enumerate(steps):
        if isinstance(step, ReluStep):
            v = values[k]
            assert not np.any((bounds.lo[k][0] >= 0) & (v < 0).any(axis=0))
            assert not np.any((bounds.hi[k][0] <= 0) & (v > 0).any(axis=0))


def test_split_proves_what_milp_proves_on_acas_prop4(benchmarks: Path) -> None:
    acas = benchmarks / "acasxu"
    steps = steps_of(import_network(load_model(acas / "ACASXU_run2a_1_1_batch_2000.onnx")))
    box = read_vnnlib(acas / "prop_4.vnnlib").cases[0].box
    split = split_bounds(steps, box.lo, box.hi, max_boxes=256)
    crown = crown_bounds(steps, box.lo, box.hi)
    # exact MILP stability on this box: 243 of 300 (89 active, 154 inactive)
    assert relu_stability(steps, crown)["stable"] < relu_stability(steps, split.bounds)["stable"]
    assert relu_stability(steps, split.bounds)["stable"] >= 240


def test_props_sharing_a_box_are_one_pair(benchmarks: Path) -> None:
    found = bench.pairs(["1_1"], ["prop_1", "prop_2", "prop_3"], benchmarks / "acasxu")
    assert [label for _, label, _ in found] == ["prop_1+prop_2", "prop_3"]


def test_benchmark_runs_on_one_pair(benchmarks: Path, tmp_path: Path) -> None:
    args = ["--nets", "1_1", "--props", "prop_4", "--milp-limit", "3", "--lp-limit", "2"]
    args += ["--split-boxes", "32", "--full-boxes", "64", "--acas", str(benchmarks / "acasxu")]
    assert bench.main([*args, "--results", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "stability.json").read_text())
    (row,) = data["rows"]
    assert row["relus"] == 300 and row["box"] == "prop_4"
    assert sum(row["violations"].values()) == 0 and row["contradictions"] == 0
    s = row["stable"]
    assert s["interval"] <= s["crown"] <= s["split"] <= s["split_full"] <= row["exact_upper"]
    assert row["exact_lower"] <= row["exact_upper"]
    assert "| 1_1 | prop_4 | 300 |" in (tmp_path / "stability.md").read_text()


def test_split_does_not_claim_stability_that_holds_only_in_float64() -> None:
    """z = x - (x + 2^24) + 2^24 is 0 in exact arithmetic, not after float32 rounding."""
    big = float(2**24)
    first = Dense("lift", weight=np.array([[1.0], [1.0]]), bias=np.array([0.0, big]))
    second = Dense("cancel", weight=np.array([[1.0, -1.0]]), bias=np.array([big]))
    net = network((1,), [first, Relu("r1"), second, Relu("r2")])
    steps = steps_of(net)
    bounds = split_bounds(steps, np.array([0.25]), np.array([0.75]), max_boxes=64).bounds
    assert bounds.hi[3][0, 0] > 0, "a bound of 0 would claim the ReLU inactive"
