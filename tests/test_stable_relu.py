"""stable_relu: golden (emitted layers and ONNX ops), numeric (onnxruntime on the
domain), soundness (100,000 samples + PGD; exact stability of every removed
unit by MILP; z3 equivalence of a small net) and negative tests: a ReLU stable
only in float64, an input set that is not one box (several boxes: their hull;
linear input constraints: refused with the line), an unsupported pattern.
MaxPool with ceil_mode or a used Indices output is refused at import
(tests/test_importer.py)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import z3
from analysis_helpers import network

from relugate.compiler.domain import Box
from relugate.compiler.errors import BadSpec
from relugate.compiler.exporter import to_onnx
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_network
from relugate.compiler.pipeline import Pipeline, default_passes
from relugate.compiler.spec import parse_vnnlib, read_vnnlib
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.milp import exact_stability_all
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.analysis.steps import steps_of
from relugate.passes.base import PassContext, PassResult
from relugate.passes.stable_relu import StableRelu

UNIT2 = Box(np.zeros(2), np.ones(2))


def run(net: Network, box: Box | None, **options: object) -> PassResult:
    return StableRelu().run(net, PassContext(domain=box, options=dict(options)))


def dense(name: str, w: list[list[float]], b: list[float]) -> Dense:
    return Dense(name, weight=np.array(w), bias=np.array(b))


def golden_net() -> Network:
    """On [0,1]^2: fc1 units 1 and 3 inactive, 0 active, 2 unstable; every fc2 unit active."""
    fc1 = dense("fc1", [[1, 1], [-1, -1], [1, -1], [2, 0]], [0.5, -0.5, 0, -3])
    fc2 = dense("fc2", [[1, 5, 1, 7], [0.5, -3, 0, 2], [1, 1, 1, 1]], [1, 0, 0.125])
    fc3 = dense("fc3", [[1, -2, 0.5], [0.25, 1, -1]], [0.5, -1])
    return network((2,), [fc1, Relu("r1"), fc2, Relu("r2"), fc3])


def kinds(net: Network) -> list[str]:
    return [lay.describe() for lay in net.layers]


def test_golden_small_net() -> None:
    net = golden_net()
    result = run(net, UNIT2)
    out = result.network
    assert result.changed
    assert kinds(out) == ["dense 2->2", "relu", "dense 2->2"]
    assert [op.op_type for op in to_onnx(out).graph.node] == ["Gemm", "Relu", "Gemm"]
    fc1, fc2, fc3 = (lay for lay in net.layers if isinstance(lay, Dense))
    first, last = out.layers[0], out.layers[2]
    assert isinstance(first, Dense) and isinstance(last, Dense)
    np.testing.assert_array_equal(first.weight, fc1.weight[[0, 2]])
    np.testing.assert_array_equal(first.bias, fc1.bias[[0, 2]])
    np.testing.assert_array_equal(last.weight, fc3.weight @ fc2.weight[:, [0, 2]])
    np.testing.assert_array_equal(last.bias, fc3.weight @ fc2.bias + fc3.bias)
    claims = [(e.claim, e.where.get("layer"), e.where.get("index")) for e in result.certificate]
    assert claims[0][0] == "domain" and result.certificate[0].where == UNIT2.to_json()
    assert ("inactive", "r1", 1) in claims and ("inactive", "r1", 3) in claims
    assert {c for c in claims if c[0] == "active"} == {("active", "r2", i) for i in range(3)}
    assert ("equivalent", None, None) in claims
    inactive = [e for e in result.certificate if e.claim == "inactive"]
    analysis = result.report["analysis"]  # "split" for this 2-input domain (auto)
    assert all(e.where["hi"] <= 0 and analysis in e.justification for e in inactive)
    report = result.report
    assert report["before"]["relus"] == 7 and report["after"]["relus"] == 2
    assert report["layers"]["r1"]["inactive_removed"] == 2
    assert report["layers"]["r2"]["relu_dropped"]


def test_golden_net_is_exactly_equivalent_by_z3() -> None:
    """The weights are dyadic, so the fold is exact: prove equality over the box in reals."""
    net = golden_net()
    out = run(net, UNIT2).network
    xs = [z3.Real(f"x{i}") for i in range(2)]

    def value(n: Network) -> list[z3.ArithRef]:
        h: list[z3.ArithRef] = list(xs)
        for lay in n.layers:
            if isinstance(lay, Dense):
                w, b = lay.weight.astype(float), lay.bias.astype(float)
                h = [sum(w[r, c] * h[c] for c in range(len(h))) + b[r] for r in range(len(b))]
            else:
                h = [z3.If(v > 0, v, 0) for v in h]
        return h

    solver = z3.Solver()
    solver.add(*[z3.And(x >= 0, x <= 1) for x in xs])
    solver.add(z3.Or(*[a != b for a, b in zip(value(net), value(out), strict=True)]))
    assert solver.check() == z3.unsat


def test_dependent_active_unit_is_removed() -> None:
    """On x in [0, 1], u0 = x + 1 and u1 = 2x + 0.5 are active and u0 = u1 / 2 + 0.75:
    u0 goes, its column lands on u1 (times 1/2) and its constant on the next bias."""
    fc1 = dense("fc1", [[1], [2], [1]], [1, 0.5, -0.5])
    net = network((1,), [fc1, Relu("r1"), dense("fc2", [[1, 1, 1]], [0])])
    box = Box(np.zeros(1), np.ones(1))
    result = run(net, box)
    first, last = result.network.layers[0], result.network.layers[2]
    assert isinstance(first, Dense) and isinstance(last, Dense)
    np.testing.assert_array_equal(first.weight, [[2], [1]])
    np.testing.assert_array_equal(last.weight, [[1.5, 1]])
    np.testing.assert_array_equal(last.bias, [0.75])
    (entry,) = [e for e in result.certificate if e.claim == "active"]
    assert entry.where["index"] == 0 and entry.where["basis"] == [1] and entry.where["lo"] >= 0
    assert result.report["layers"]["r1"]["active_dependent_removed"] == 1
    assert_sound(net, result.network, box, samples=10_000)


def random_net(seed: int, widths: list[int], shift: float) -> Network:
    """A Dense/ReLU chain whose biases push many units to stable on [0, 1]^n."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for k, (a, b) in enumerate(pairwise(widths)):
        bias = rng.normal(0, 1, b) + rng.choice([-shift, shift], b)
        layers.append(Dense(f"fc{k}", weight=rng.normal(0, 1 / np.sqrt(a), (b, a)), bias=bias))
        layers.append(Relu(f"r{k}"))
    return network((widths[0],), layers[:-1])


def conv_net() -> Network:
    """Conv -> ReLU -> Conv -> ReLU -> MaxPool -> flatten -> Dense, some channels dead."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.3, (4, 1, 3, 3))
    b1 = np.array([0.2, -5.0, 0.1, 0.3])  # channel 1 inactive on [0, 1]
    w1[1] = -np.abs(w1[1])
    w2 = rng.normal(0, 0.3, (3, 4, 2, 2))
    b2 = np.array([0.1, -9.0, 0.0])  # channel 1 inactive
    same = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1)}
    layers: list[Layer] = [
        Conv("c1", w1, b1, **same),  # type: ignore[arg-type]
        Relu("rc1"),
        Conv("c2", w2, b2, **same),  # type: ignore[arg-type]
        Relu("rc2"),
        MaxPool("pool", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)),
        Reshape("flat", shape=(12,)),
        Dense("fc", weight=rng.normal(0, 1, (2, 12)), bias=np.zeros(2)),
    ]
    return network((1, 8, 8), layers)


def test_conv_channels_and_flatten_mapping() -> None:
    net = conv_net()
    box = Box(np.zeros(64), np.ones(64))
    result = run(net, box)
    out = result.network
    assert kinds(out)[:3] == ["conv 1->3 k3x3", "relu", "conv 3->2 k2x2"]
    assert out.layers[5].describe() == "reshape (8,)" and kinds(out)[6] == "dense 8->2"
    inactive = {(e.where["layer"], e.where["index"]) for e in result.certificate[1:]}
    assert {("rc1", 1), ("rc2", 1)} <= inactive
    assert_matches_onnxruntime(net, out, box)


def assert_matches_onnxruntime(before: Network, after: Network, box: Box) -> None:
    x = np.concatenate([box.corners_and_center(), box.sample(512, np.random.default_rng(0))])
    assert mismatch(run_network(before, x), run_network(after, x)).max() <= TOLERANCE


def test_numeric_against_onnxruntime() -> None:
    net = random_net(0, [4, 32, 32, 32, 3], shift=2.0)
    box = Box(np.zeros(4), np.ones(4))
    result = run(net, box)
    assert result.report["after"]["relus"] < result.report["before"]["relus"]
    assert_matches_onnxruntime(net, result.network, box)


def test_all_active_layer_is_folded_within_tolerance() -> None:
    """A hidden layer active on the whole box loses its ReLU and folds into its neighbour."""
    rng = np.random.default_rng(5)
    fc0 = Dense("fc0", weight=rng.normal(0, 0.5, (30, 4)), bias=rng.uniform(3, 4, 30))
    fc1 = Dense("fc1", weight=rng.normal(0, 0.3, (30, 30)), bias=rng.normal(0, 1, 30))
    fc2 = Dense("fc2", weight=rng.normal(0, 0.3, (3, 30)), bias=np.zeros(3))
    net = network((4,), [fc0, Relu("r0"), fc1, Relu("r1"), fc2])
    box = Box(np.zeros(4), np.ones(4))
    result = run(net, box)
    assert kinds(result.network)[:2] == ["dense 4->19", "relu"]  # fc0 and fc1 folded
    assert result.report["layers"]["r0"]["relu_dropped"]
    merged = [e for e in result.certificate if e.claim == "equivalent"]
    assert merged and merged[0].where == {"merged": ["fc0", "fc1"]}
    assert "measured" in merged[0].justification  # the worst-case bound is too loose here
    proved_only = run(net, box, fold="proved").network
    assert kinds(proved_only)[:3] == ["dense 4->30", "dense 30->19", "relu"]
    assert_matches_onnxruntime(net, result.network, box)
    assert_sound(net, result.network, box)


def assert_sound(before: Network, after: Network, box: Box, samples: int = 100_000) -> None:
    """Largest difference on samples (float32) and where PGD finds them furthest apart."""
    x = np.concatenate([box.corners_and_center(), box.sample(samples, np.random.default_rng(1))])
    gap = np.abs(before.forward(x, np.float32) - after.forward(x, np.float32)).max()
    assert gap < 1e-5
    worst = max_difference(before, after, box, np.random.default_rng(2), starts=10, steps=50)
    assert worst.value < 1e-5


@pytest.mark.parametrize("method", ["crown", "lp"])
def test_soundness_attack(method: str) -> None:
    net = random_net(1, [5, 40, 40, 40, 4], shift=1.5)
    box = Box(np.zeros(5), np.ones(5))
    result = run(net, box, stability=method)
    assert result.report["after"]["relus"] < result.report["before"]["relus"]
    assert_sound(net, result.network, box)


def test_removed_units_are_exactly_stable() -> None:
    """Every unit the pass removed or linearized is labelled so by MILP on the original."""
    net = random_net(2, [3, 30, 30, 30, 2], shift=1.5)  # 90 ReLUs
    box = Box(-np.ones(3), np.ones(3))
    result = run(net, box)
    steps = steps_of(net)
    labels, _ = exact_stability_all(steps, crown_bounds(steps, box.lo, box.hi))
    by_name = {s.layer.name: labels[k].labels for k, s in enumerate(steps) if k in labels}
    claimed = [e for e in result.certificate if e.claim in ("inactive", "active")]
    assert claimed
    for e in claimed:
        assert by_name[e.where["layer"]][e.where["index"]] == e.claim


def test_milp_analysis_finds_at_least_crown() -> None:
    net = random_net(4, [3, 20, 20, 2], shift=1.0)
    box = Box(-np.ones(3), np.ones(3))
    crown, milp = run(net, box), run(net, box, stability="milp")
    assert milp.report["after"]["relus"] <= crown.report["after"]["relus"]
    assert any("not a proof" in e.justification for e in milp.certificate if e.claim != "domain")
    assert_sound(net, milp.network, box, samples=20_000)


def test_no_domain_leaves_network_unchanged() -> None:
    net = golden_net()
    result = run(net, None)
    assert not result.changed and result.network is net
    assert "no input domain" in result.report["reason"]


def test_unsupported_pattern_is_named() -> None:
    """Inactive units read through a Scale cannot be deleted: left in place, layer named."""
    fc1 = dense("fc1", [[1, 1], [-1, -1]], [0.5, -0.5])
    scale = Scale("s", mul=np.array([2.0, 3.0]), add=np.zeros(2))
    net = network((2,), [fc1, Relu("r1"), scale, dense("fc2", [[1, 1]], [0])])
    result = run(net, UNIT2)
    assert not result.changed and result.network is net
    assert "scale 's'" in result.report["skipped"]["r1"]


def test_bad_options_and_domain_are_typed_errors() -> None:
    with pytest.raises(BadSpec, match="stability analysis"):
        run(golden_net(), UNIT2, stability="magic")
    with pytest.raises(BadSpec, match="inputs"):
        run(golden_net(), Box(np.zeros(3), np.ones(3)))


def test_relu_stable_only_in_float64_is_kept() -> None:
    """z = x - (x + 2^24) + 2^24 is 0 in exact arithmetic, not in float32: r2 must stay,
    and folding lift+cancel (which would make z exactly 0) must be refused."""
    big = float(2**24)
    lift = dense("lift", [[1.0], [1.0]], [0.0, big])
    cancel = dense("cancel", [[1.0, -1.0]], [big])
    net = network((1,), [lift, Relu("r1"), cancel, Relu("r2"), dense("out", [[1.0]], [0.0])])
    box = Box(np.array([0.25]), np.array([0.75]))
    result = run(net, box)
    assert kinds(result.network) == ["dense 1->2", "dense 2->1", "relu", "dense 1->1"]
    assert any("not folded" in note for note in result.report["notes"])
    assert_matches_onnxruntime(net, result.network, box)


# --- a domain that is not a box ------------------------------------------------------

UNION_SPEC = """(declare-const X_0 Real)
(declare-const Y_0 Real)
(assert (or (and (>= X_0 0) (<= X_0 0.2)) (and (>= X_0 0.8) (<= X_0 1))))
(assert (<= Y_0 -5))
"""


def union_net() -> Network:
    """z0 = 0.2 - |x - 0.5| is < 0 on [0, 0.2] and on [0.8, 1], but not on their hull
    [0, 1]; z1 = 1 + |x - 0.5| is always active; fc1 unit 2 is inactive everywhere."""
    fc1 = dense("fc1", [[1], [-1], [-1]], [-0.5, 0.5, -1])
    fc2 = dense("fc2", [[-1, -1, 3], [1, 1, 3]], [0.2, 1])
    return network((1,), [fc1, Relu("r1"), fc2, Relu("r2"), dense("out", [[1, 1]], [0])])


def test_several_input_boxes_use_their_hull_soundly() -> None:
    """A spec whose input set is a union of boxes: the domain is the hull (it holds every
    case box), so a unit inactive on each box but not between them stays."""
    from relugate.compiler.compile import resolve_domain

    net = union_net()
    prop = parse_vnnlib(UNION_SPEC)
    assert [(c.box.lo[0], c.box.hi[0]) for c in prop.cases] == [(0.0, 0.2), (0.8, 1.0)]
    hull = resolve_domain([prop], (), net)
    assert hull == prop.domain() == Box(np.zeros(1), np.ones(1))
    for case in prop.cases:  # on one case box alone, z0 is provably inactive
        alone = run(net, case.box)
        claims = {(e.claim, e.where.get("layer"), e.where.get("index")) for e in alone.certificate}
        assert ("inactive", "r2", 0) in claims
    result = run(net, hull)
    claims = {(e.claim, e.where.get("layer"), e.where.get("index")) for e in result.certificate}
    assert ("inactive", "r1", 2) in claims and ("inactive", "r2", 0) not in claims
    domain = [e for e in result.certificate if e.claim == "domain"]
    assert domain and domain[0].where == hull.to_json()
    assert_sound(net, result.network, hull, samples=10_000)


def test_lone_constant_active_unit_in_a_kept_layer() -> None:
    """A layer keeping its ReLU whose only active unit has an all-zero weight row (a
    constant): rank 0, the constant folds into the next bias (this used to crash)."""
    net = network(
        (1,), [dense("fc1", [[1], [0]], [-0.5, 1]), Relu("r"), dense("out", [[1, 1]], [0])]
    )
    box = Box(np.zeros(1), np.ones(1))
    assert_sound(net, run(net, box).network, box, samples=1000)


def test_non_box_input_constraint_is_refused_with_its_line(tmp_path: Path) -> None:
    spec = tmp_path / "diag.vnnlib"
    spec.write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
        "(assert (>= X_0 0))\n(assert (<= (+ X_0 X_1) 1))\n(assert (<= Y_0 0))\n"
    )
    with pytest.raises(BadSpec, match=r"diag\.vnnlib:5: non-box input constraints"):
        read_vnnlib(spec)


def test_pipeline_includes_stable_relu() -> None:
    net = golden_net()
    result = Pipeline(default_passes()).run(net, PassContext(domain=UNIT2))
    assert "stable_relu" in [s.name for s in result.steps]
    assert result.network.relu_count() == 2


@pytest.mark.benchmarks
def test_acasxu_property_box_soundness(benchmarks) -> None:  # type: ignore[no-untyped-def]
    model = benchmarks / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
    net = import_network(load_model(model))
    normalize = [p for p in default_passes() if p.name != "stable_relu"]
    net = Pipeline(normalize).run(net, PassContext()).network
    box = read_vnnlib(benchmarks / "acasxu" / "prop_3.vnnlib").domain()
    result = run(net, box)
    assert result.report["after"]["relus"] < 0.7 * result.report["before"]["relus"]
    assert_sound(net, result.network, box)
    assert_matches_onnxruntime(net, result.network, box)
