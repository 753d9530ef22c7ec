"""linear_skip (stable_relu with skip=True): golden (the SkipDense layer and its
exported ONNX subgraph), numeric (onnxruntime on the domain, re-import), soundness
(interval / CROWN / MILP bounds of the lowered chain enclose dense samples; the
reduced network equals the original on the box) and negative tests (a skip that
would add parameters is not made, with the reason; fold mode 'none' makes none)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from analysis_helpers import network

from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import run_network
from relugate.compiler.skip_dense import SkipDense
from relugate.passes import linear_skip
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.milp import exact_stability_all
from relugate.passes.analysis.steps import Affine, ReluStep, steps_of
from relugate.passes.base import PassContext, PassResult
from relugate.passes.linear_skip import skip_cost, why_not
from relugate.passes.stable_relu import StableRelu
from relugate.passes.stable_relu_linear import step_index

BOX3 = Box(np.zeros(3), np.ones(3))


def run(net: Network, box: Box, **options: object) -> PassResult:
    return StableRelu().run(net, PassContext(domain=box, options=dict(options)))


def block_net(n_out: int = 2, seed: int = 0, active: int = 4) -> Network:
    """On [0,1]^3: fc1 units ``0 .. active - 1`` stably active (bias 5, weights <= 1), the
    rest (of 6) unstable."""
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(-1, 1, (6, 3))
    b1 = np.where(np.arange(6) < active, 5.0, 0.0)
    for j in range(active, 6):
        w1[j] = [1, -1, 0.5] if j % 2 else [-1, 1, 0.25]
    fc1 = Dense("fc1", weight=w1, bias=b1)
    fc2 = Dense("fc2", weight=rng.uniform(-1, 1, (n_out, 6)), bias=rng.uniform(-1, 1, n_out))
    return network((3,), [fc1, Relu("r1"), fc2])


def samples(box: Box, n: int = 20000) -> np.ndarray:
    return np.concatenate([box.corners_and_center(), box.sample(n, np.random.default_rng(1))])


def test_golden_skip_layer_and_certificate() -> None:
    net = block_net()
    res = run(net, BOX3, stability="crown", skip=True)
    (layer,) = res.network.layers
    assert isinstance(layer, SkipDense)
    assert layer.inner.n_out == 2 and layer.skip.shape == (2, 3)
    w1, b1 = net.layers[0].weight, net.layers[0].bias  # type: ignore[attr-defined]
    w2 = net.layers[2].weight  # type: ignore[attr-defined]
    np.testing.assert_allclose(layer.skip, w2[:, :4] @ w1[:4], rtol=1e-6)
    np.testing.assert_allclose(layer.inner.weight, w1[4:])
    assert layer.outer.bias == pytest.approx(net.layers[2].bias + w2[:, :4] @ b1[:4], rel=1e-6)  # type: ignore[attr-defined]
    entries = [e for e in res.certificate if e.claim == "active"]
    assert sorted(e.where["index"] for e in entries) == [0, 1, 2, 3]
    assert all(e.where["lo"] >= 0 and "linear skip" in e.where["linear_skip"] for e in entries)
    before, after = res.report["before"], res.report["after"]
    assert (before["relus"], after["relus"]) == (6, 2)
    assert after["params"] == skip_cost(net.layers[0], net.layers[2], 4)[0] < before["params"]  # type: ignore[arg-type]
    assert after["flops"] <= before["flops"]
    assert res.report["layers"]["r1"]["skip"].startswith("made: 4 units")


def test_exported_skip_graph_runs_in_onnxruntime_and_reimports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = block_net()
    reduced = run(net, BOX3, stability="crown", skip=True).network
    model = to_onnx(reduced)
    nodes = {n.name: n for n in model.graph.node}
    assert {name: n.op_type for name, n in nodes.items()} == {
        "fc2/inner": "Gemm",
        "fc2/relu": "Relu",
        "fc2/outer": "Gemm",
        "fc2/skip": "Gemm",
        "fc2": "Add",
    }
    x_name = model.graph.input[0].name
    assert nodes["fc2/skip"].input[0] == nodes["fc2/inner"].input[0] == x_name
    assert len(nodes["fc2/skip"].input) == 2  # no bias: outer carries it
    assert list(nodes["fc2"].input) == [nodes["fc2/outer"].output[0], nodes["fc2/skip"].output[0]]
    x = samples(BOX3).astype(np.float32)
    ort = run_network(reduced, x)
    np.testing.assert_allclose(ort, reduced.forward(x, np.float32), atol=1e-6)
    np.testing.assert_allclose(ort, net.forward(x, np.float32), atol=1e-5)
    path = tmp_path / "skip.onnx"
    onnx.save(model, str(path))
    back = import_network(load_model(str(path)))
    (layer,) = back.layers
    assert isinstance(layer, SkipDense)
    np.testing.assert_array_equal(layer.skip, reduced.layers[0].skip)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(back.forward(x, np.float32), reduced.forward(x, np.float32))


def chain_values(steps: list, x: np.ndarray) -> list[np.ndarray]:  # type: ignore[type-arg]
    """The input of every step (and the output) on rows ``x``, in float64."""
    values = [x]
    for step in steps:
        if isinstance(step, Affine):
            values.append(step.apply(values[-1]) + step.bias())
        else:
            assert isinstance(step, ReluStep)
            values.append(np.maximum(values[-1], 0))
    return values


@pytest.mark.parametrize("method", ["interval", "crown", "milp"])
def test_bounds_of_lowered_skip_enclose_samples(method: str) -> None:
    box = Box(-np.ones(3), np.ones(3))  # x takes both signs: relu(-x) is not stably 0
    net = block_net(n_out=2, seed=3)
    fc1, _, fc2 = net.layers
    layer = SkipDense("s", inner=fc1, outer=fc2, skip=np.random.default_rng(2).normal(size=(2, 3)))  # type: ignore[arg-type]
    skipped = network(
        (3,), [layer, Relu("r"), Dense("out", weight=np.ones((1, 2)), bias=np.zeros(1))]
    )
    steps = steps_of(skipped)
    assert len(steps) == 5 and step_index(skipped).tolist() == [2, 3, 4]
    x = samples(box)
    values = chain_values(steps, x)
    np.testing.assert_allclose(values[3], skipped.layers[0].forward(x), atol=1e-9)
    np.testing.assert_allclose(values[-1], skipped.forward(x), atol=1e-9)
    bounds = (interval_bounds if method == "interval" else crown_bounds)(steps, box.lo, box.hi)
    if method == "milp":
        _, bounds = exact_stability_all(steps, bounds, time_limit=60)
    for k, v in enumerate(values):
        assert np.all(v >= bounds.lo[k][0] - 1e-7) and np.all(v <= bounds.hi[k][0] + 1e-7), k


def test_reduced_equals_original_on_the_box() -> None:
    net = block_net(n_out=2, seed=5)
    reduced = run(net, BOX3, stability="milp", skip=True).network
    assert isinstance(reduced.layers[0], SkipDense)
    x = samples(BOX3, 100000)
    diff = np.abs(reduced.forward(x, np.float32) - net.forward(x, np.float32)).max()
    assert diff < 1e-5


def test_skip_that_adds_parameters_is_not_made() -> None:
    """1 active unit of 6, 3 inputs, 8 outputs: it saves 1 * (3 + 8 + 1) = 12 parameters,
    the skip matrix costs 8 * 3 = 24."""
    net = block_net(n_out=8, active=1)
    fc1, _, fc2 = net.layers
    reason = why_not(fc1, fc2, 1)  # type: ignore[arg-type]
    assert reason is not None and "parameters" in reason
    res = run(net, BOX3, stability="crown", skip=True)
    assert [lay.kind for lay in res.network.layers] == ["dense", "relu", "dense"]
    assert res.report["layers"]["r1"]["skip"] == f"not made: {reason}"
    assert not any("linear_skip" in e.where for e in res.certificate)


def test_no_skip_without_the_option_or_in_fold_mode_none() -> None:
    net = block_net()
    assert all(not isinstance(lay, SkipDense) for lay in run(net, BOX3).network.layers)
    res = run(net, BOX3, stability="crown", skip=True, fold="none")
    assert [lay.kind for lay in res.network.layers] == ["dense", "relu", "dense"]
    assert "fold mode 'none'" in res.report["layers"]["r1"]["skip"]


def two_blocks() -> Network:
    """r1's and r2's blocks share fc2; both pay, r2's saves more."""
    net = block_net(n_out=6)
    fc1, r1, _ = net.layers
    w2 = np.zeros((6, 6))
    w2[:4] = np.random.default_rng(4).uniform(-0.1, 0.1, (4, 6))
    w2[4:, 4:] = [[1, -1], [-1, 1]]
    fc2 = Dense("fc2", weight=w2, bias=np.array([5.0, 5, 5, 5, 0, 0]))
    fc3 = Dense("fc3", weight=np.random.default_rng(5).uniform(-1, 1, (2, 6)), bias=np.zeros(2))
    return network((3,), [fc1, r1, fc2, Relu("r2"), fc3])


def test_two_paying_blocks_sharing_a_dense_take_one_skip() -> None:
    """The larger saving (r2's) is made, r1 gets a reason."""
    two = two_blocks()
    res = run(two, BOX3, stability="crown", skip=True)
    assert [lay.kind for lay in res.network.layers] == ["dense", "relu", "skip_dense"]
    layers = res.report["layers"]
    assert layers["r2"]["skip"].startswith("made: 4 units")
    assert layers["r1"]["skip"] == "not made: a neighbouring block took the skip"
    x = samples(BOX3)
    diff = np.abs(res.network.forward(x, np.float32) - two.forward(x, np.float32)).max()
    assert diff < 1e-5 and res.report["after"]["params"] < res.report["before"]["params"]


def test_a_rejected_skip_frees_its_neighbour(monkeypatch: pytest.MonkeyPatch) -> None:
    """When r2's skip fails the float32 check, r1's (sharing fc2) is tried and made."""
    real = linear_skip.measured

    def reject_fc3(before: Network, after: Network, box: Box) -> str | None:
        if any(isinstance(lay, SkipDense) and lay.name == "fc3" for lay in after.layers):
            return None
        return real(before, after, box)

    monkeypatch.setattr(linear_skip, "measured", reject_fc3)
    two = two_blocks()
    res = run(two, BOX3, stability="crown", skip=True)
    assert [lay.kind for lay in res.network.layers] == ["skip_dense", "relu", "dense"]
    layers = res.report["layers"]
    assert layers["r2"]["skip"] == "not made: float32 change too large"
    assert layers["r1"]["skip"].startswith("made: 4 units")
