"""Soundness of the bound analyses: try to break every bound.

Random small networks (dense, conv, max-pool, scale, transpose) on random
boxes; every bound must enclose float32 activations at dense samples, at the
box corners, and at the extremes PGD finds for each output.  One network is
built so that a ReLU is stable in exact arithmetic but not in float32.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from analysis_helpers import assert_encloses, network, step_values
from hypothesis import given, settings
from hypothesis import strategies as st

from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale, Transpose
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import run_batch
from relugate.passes.analysis.alpha import bound_and_gradient, optimized_spec_bounds
from relugate.passes.analysis.crown import backsubstitute, crown_bounds, spec_lower_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.pgd import pgd_maximize
from relugate.passes.analysis.steps import ReluStep, float32_box, steps_of


def output_extremes(net: Network, box: Box, rng: np.random.Generator) -> np.ndarray:
    """Inputs PGD finds at the min and max of every output."""
    n_out = net.output.size
    points = []
    for k in range(n_out):
        for sign in (1.0, -1.0):
            seed = np.zeros(n_out)
            seed[k] = sign

            def objective(x: np.ndarray, seed: np.ndarray = seed) -> tuple[np.ndarray, np.ndarray]:
                y, g = net.gradient(x, np.broadcast_to(seed, (len(x), n_out)))
                return y.reshape(len(x), -1) @ seed, g.reshape(len(x), -1)

            points.append(pgd_maximize(objective, box, rng, starts=3, steps=30).x)
    return np.array(points)


@st.composite
def random_nets(draw: st.DrawFn) -> tuple[Network, Box]:
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    if kind == "mlp":
        sizes = draw(st.lists(st.integers(1, 8), min_size=2, max_size=5))
        layers: list[Layer] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(
                Dense(f"d{i}", weight=rng.normal(0, 1, (b, a)), bias=rng.normal(0, 0.5, b))
            )
            if i < len(sizes) - 2:
                layers.append(Relu(f"r{i}"))
        in_shape: tuple[int, ...] = (sizes[0],)
    else:
        c = draw(st.integers(1, 3))
        layers = [
            Scale("norm", mul=rng.uniform(0.5, 2, (c, 1, 1)), add=rng.normal(0, 0.3, (c, 1, 1))),
            Conv(
                "c",
                weight=rng.normal(0, 0.5, (4, c, 2, 2)),
                bias=rng.normal(0, 0.2, 4),
                strides=(1, 1),
                pads=(1, 0, 0, 1),
                dilations=(1, 1),
            ),
            Relu("r"),
            MaxPool("p", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)),
            Transpose("t", perm=(1, 2, 0)),
            Reshape("f", shape=(36,)),
            Dense("d", weight=rng.normal(0, 0.3, (5, 36)), bias=rng.normal(0, 0.2, 5)),
            Relu("r2"),
            Dense("o", weight=rng.normal(0, 0.5, (2, 5)), bias=rng.normal(0, 0.2, 2)),
        ]
        in_shape = (c, 6, 6)
    net = network(in_shape, layers)
    center = rng.normal(0, 1, net.input.size)
    radius = rng.uniform(0.01, 1.0, net.input.size)
    return net, Box(center - radius, center + radius)


@settings(max_examples=40, deadline=None)
@given(random_nets())
def test_interval_and_crown_enclose_float32_behaviour(case: tuple[Network, Box]) -> None:
    net, box = case
    rng = np.random.default_rng(0)
    steps = steps_of(net)
    ibp = interval_bounds(steps, box.lo, box.hi)
    crown = crown_bounds(steps, box.lo, box.hi)
    x = np.concatenate(
        [box.corners_and_center(), box.sample(3000, rng), output_extremes(net, box, rng)]
    )
    values = step_values(net, x)
    assert_encloses(ibp, values)
    assert_encloses(crown, values)
    for k in range(len(crown.lo)):  # crown is intersected with intervals: never looser
        assert np.all(crown.lo[k] >= ibp.lo[k]) and np.all(crown.hi[k] <= ibp.hi[k])


@settings(max_examples=25, deadline=None)
@given(random_nets())
def test_spec_bounds_enclose_every_sample(case: tuple[Network, Box]) -> None:
    net, box = case
    rng = np.random.default_rng(1)
    steps = steps_of(net)
    C = rng.normal(0, 1, (3, net.output.size))
    lb, _ = spec_lower_bounds(steps, crown_bounds(steps, box.lo, box.hi), C)
    x = np.concatenate([box.corners_and_center(), box.sample(3000, rng)])
    y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1).astype(np.float64)
    assert np.all(y @ C.T >= lb[0])


def test_crown_is_tighter_than_intervals_on_a_deep_net() -> None:
    rng = np.random.default_rng(3)
    layers: list[Layer] = []
    for i in range(4):
        layers += [
            Dense(f"d{i}", weight=rng.normal(0, 0.4, (10, 10)), bias=rng.normal(0, 0.1, 10)),
            Relu(f"r{i}"),
        ]
    net = network(
        (10,), [*layers, Dense("o", weight=rng.normal(0, 0.4, (2, 10)), bias=np.zeros(2))]
    )
    box = Box(-np.ones(10) * 0.2, np.ones(10) * 0.2)
    steps = steps_of(net)
    ibp, crown = interval_bounds(steps, box.lo, box.hi), crown_bounds(steps, box.lo, box.hi)
    assert np.sum(crown.hi[-1] - crown.lo[-1]) < 0.8 * np.sum(ibp.hi[-1] - ibp.lo[-1])


def float64_only_stable_net() -> Network:
    """z = x - (x + 2^24) + 2^24 is 0 in exact arithmetic, but float32 rounds x + 2^24."""
    big = float(2**24)
    first = Dense("lift", weight=np.array([[1.0], [1.0]]), bias=np.array([0.0, big]))
    second = Dense("cancel", weight=np.array([[1.0, -1.0]]), bias=np.array([big]))
    return network((1,), [first, Relu("r1"), second, Relu("r2")])


def test_relu_stable_only_in_float64_is_not_claimed_stable() -> None:
    net = float64_only_stable_net()
    box = Box(np.array([0.25]), np.array([0.75]))
    steps = steps_of(net)
    crown = crown_bounds(steps, box.lo, box.hi)
    relu2 = [k for k, s in enumerate(steps) if isinstance(s, ReluStep)][1]
    # exact arithmetic says z == 0 everywhere (inactive); float32 execution disagrees
    x = np.linspace(0.25, 0.75, 101)[:, None]
    z32 = run_batch(to_onnx(net, batch="N"), TensorSpec("x", (1, 1), True, "N"), x)
    assert np.any(z32 != 0), "onnxruntime should show the float32 rounding"
    assert crown.hi[relu2][0, 0] > 0, "a bound of 0 would claim the ReLU inactive"
    assert np.all(z32[:, 0] <= crown.hi[-1][0, 0])


def test_float32_box_contains_rounded_inputs() -> None:
    lo, hi = np.array([0.1, -1 / 3]), np.array([0.7, 1 / 3])
    lo32, hi32 = float32_box(lo, hi)
    rng = np.random.default_rng(0)
    x = (lo + rng.random((10000, 2)) * (hi - lo)).astype(np.float32).astype(np.float64)
    assert np.all(x >= lo32) and np.all(x <= hi32)
    assert np.all(lo32 <= lo) and np.all(hi32 >= hi)


@pytest.mark.benchmarks
def test_crown_encloses_acas_on_property_boxes(benchmarks) -> None:  # type: ignore[no-untyped-def]
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network
    from relugate.compiler.spec import read_vnnlib

    net = import_network(load_model(benchmarks / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"))
    steps = steps_of(net)
    for prop in ("prop_1", "prop_2", "prop_3", "prop_4"):
        box = read_vnnlib(benchmarks / "acasxu" / f"{prop}.vnnlib").domain()
        crown = crown_bounds(steps, box.lo, box.hi)
        rng = np.random.default_rng(0)
        x = np.concatenate(
            [box.corners_and_center(), box.sample(20000, rng), output_extremes(net, box, rng)]
        )
        assert_encloses(crown, step_values(net, x))


@settings(max_examples=20, deadline=None)
@given(random_nets())
def test_alpha_bounds_are_sound_and_no_looser_than_crown(case: tuple[Network, Box]) -> None:
    net, box = case
    rng = np.random.default_rng(2)
    steps = steps_of(net)
    bounds = crown_bounds(steps, box.lo, box.hi)
    C = rng.normal(0, 1, (2, net.output.size))
    crown_lb, _ = spec_lower_bounds(steps, bounds, C)
    alpha_lb, _ = optimized_spec_bounds(steps, bounds, C, iterations=15)
    x = np.concatenate([box.corners_and_center(), box.sample(3000, rng)])
    y = net.forward(x.astype(np.float32), np.float32).reshape(len(x), -1).astype(np.float64)
    assert np.all(y @ C.T >= alpha_lb[0])
    # the first iterate is CROWN's own choice of slopes (before intersecting with intervals)
    unclipped, _ = backsubstitute(
        steps, len(steps), np.broadcast_to(C, (1, *C.shape)), bounds, True
    )
    assert np.all(alpha_lb >= unclipped - 1e-9 * (1 + np.abs(unclipped)))
    assert crown_lb.shape == alpha_lb.shape


def test_alpha_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(5)
    layers: list[Layer] = []
    for i in range(3):
        layers += [
            Dense(f"d{i}", weight=rng.normal(0, 0.5, (6, 6)), bias=rng.normal(0, 0.2, 6)),
            Relu(f"r{i}"),
        ]
    net = network((6,), [*layers, Dense("o", weight=rng.normal(0, 0.5, (2, 6)), bias=np.zeros(2))])
    box = Box(-np.ones(6), np.ones(6))
    steps = steps_of(net)
    bounds = crown_bounds(steps, box.lo, box.hi)
    C = np.broadcast_to(rng.normal(0, 1, (2, 2)), (1, 2, 2))
    alphas = {
        k: np.full((1, 2, steps[k].n), 0.4) for k, s in enumerate(steps) if isinstance(s, ReluStep)
    }
    value, grads, _ = bound_and_gradient(steps, bounds, C, alphas)
    checked = 0
    for k in alphas:
        unstable = np.flatnonzero((bounds.lo[k][0] < 0) & (bounds.hi[k][0] > 0))
        for n in unstable[:3]:
            bumped = {j: a.copy() for j, a in alphas.items()}
            bumped[k][0, :, n] += 1e-6
            moved, _, _ = bound_and_gradient(steps, bounds, C, bumped)
            np.testing.assert_allclose(
                (moved - value)[0] / 1e-6, grads[k][0, :, n], rtol=1e-3, atol=1e-6
            )
            checked += 1
    assert checked > 0
