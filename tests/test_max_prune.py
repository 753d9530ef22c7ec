"""maxpool_to_relu on a domain: windows pruned by the bounds into a MaxTree.

Golden graph, onnxruntime equivalence, dense-sampling soundness, the analysis
lowering, and refusals."""

from __future__ import annotations

from math import prod

import numpy as np
import pytest
from analysis_helpers import network

from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.layers import Conv, Dense, MaxPool, Relu, Reshape
from relugate.compiler.max_tree import MaxTree
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_network
from relugate.passes.analysis import max_tree_proof
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.lp_encoding import forward_steps
from relugate.passes.analysis.steps import steps_of
from relugate.passes.base import PassContext, PassResult
from relugate.passes.maxpool_to_relu import MaxPoolToRelu

PRUNE = {"maxpool": "relu"}


def prune(net: Network, box: Box, **options: object) -> PassResult:
    return MaxPoolToRelu().run(net, PassContext(box, {**PRUNE, **options}))


def conv1d(name: str, w: list[float]) -> Conv:
    return Conv(name, np.array([[w]]), np.zeros(1), (1,), (0, 0), (1,), 1)


def golden_net() -> tuple[Network, Box]:
    """x (1 x 8) -> conv [1, 1] -> relu -> maxpool 2/2 -> dense; windows {z0, z1},
    {z2, z3}, {z4, z5} of z_i = x_i + x_(i+1)."""
    layers = [
        conv1d("c", [1.0, 1.0]),
        Relu("r"),
        MaxPool("p", (2,), (2,), (0, 0), (1,)),
        Reshape("f", (3,)),
        Dense("d", np.array([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0]]), np.zeros(2)),
    ]
    lo = np.array([1.0, -5.0, 0.0, -3.0, -1.0, 2.0, 2.0, 0.0])
    hi = np.array([1.2, 5.0, 0.5, -2.0, 0.0, 3.0, 3.0, 1.0])
    return network((1, 8), layers), Box(lo, hi)


def onnx_relu_elements(net: Network) -> int:
    """Relu elements of the exported graph for one sample: onnxruntime returns every
    Relu's output."""
    import onnx
    import onnxruntime as ort

    model = to_onnx(net, batch=1)
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in relus)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, *net.input.sample_shape), dtype=np.float32)
    outs = session.run(relus, {net.input.name: x}) if relus else []
    return sum(int(o.size) for o in outs)


# -- golden ----------------------------------------------------------------------
def test_golden_windows_resolved_by_intervals_and_crown() -> None:
    net, box = golden_net()
    result = prune(net, box)
    new = result.network
    assert [lay.kind for lay in new.layers] == ["conv", "maxtree", "reshape", "dense"]
    tree = new.layers[1]
    assert isinstance(tree, MaxTree) and tree.n_in == 7 and tree.out == (1, 3)
    # buffer: z0, z5, the zero; window 0 = z0 + relu(0 ... ) pair (z0, zero); window 1 = 0
    assert tree.src.tolist() == [0, 5, 7]
    assert [(a.tolist(), b.tolist()) for a, b in tree.pairs] == [([0], [2])]
    assert tree.pick.tolist() == [3, 2, 1]
    assert new.relu_count() == 1 == onnx_relu_elements(new)
    removed = [
        (e.where["index"], e.where["element"], e.where["by"], e.where["analysis"])
        for e in result.certificate
        if e.claim == "dominated"
    ]
    assert removed == [
        (0, 1, 0, "crown"),  # z0 - z1 = x0 - x2 >= 0.5: only CROWN sees the shared x1
        (1, 3, "zero", "interval"),
        (1, 2, "zero", "interval"),
        (2, "zero", 5, "interval"),
        (2, 4, 5, "interval"),
    ]
    crown = next(e for e in result.certificate if e.where.get("analysis") == "crown")
    assert 0.49 < crown.where["lo"] <= 0.5 and crown.justification.startswith("crown bound")
    assert result.certificate[0].claim == "domain"
    (equivalent,) = [e for e in result.certificate if e.claim == "equivalent"]
    assert equivalent.where["absorbed_relu"] == "r" and "unsat" in equivalent.justification
    report = result.report["pruned"]["p"]
    assert report["one_element"] == 2 and report["zero"] == 1 and report["relus"] == 1
    assert result.report["relus_full_tree"] == 7 + 3 * 2  # relu r + [a - b, b] per window
    ops = [n.op_type for n in to_onnx(new).graph.node]
    assert ops == [
        "Conv",
        *["Flatten", "Shape", "Slice", "Concat", "Expand", "GatherElements", "Transpose"],
        "Pad",  # the zero
        *["Gather", "Gather", "Sub", "Relu", "Add", "Concat"],  # the one level
        *["Gather", "Transpose", "Reshape"],  # the outputs
        *["Flatten", "Gemm"],
    ]


# -- numeric against onnxruntime ----------------------------------------------------
CASES = [  # (input shape, conv kernel, pool kernel, strides, pads, dilations, relu before)
    ((2, 9, 9), (2, 2), (3, 3), (3, 3), (0, 0, 0, 0), (1, 1), True),
    ((2, 9, 9), (2, 2), (2, 2), (2, 2), (1, 1, 0, 0), (1, 1), True),
    ((1, 10, 10), (3, 3), (2, 2), (1, 1), (0, 0, 0, 0), (2, 2), False),
    ((3, 12), (2,), (4,), (4,), (0, 0), (1,), True),
]


def conv_pool_net(case: tuple, rng: np.random.Generator) -> Network:
    shape, kernel, k, s, pads, d, relu = case
    cin, cout = shape[0], 4
    conv = Conv(
        "c",
        rng.normal(size=(cout, cin, *kernel)),
        rng.normal(size=cout) * 0.3,
        (1,) * len(kernel),
        (0,) * (2 * len(kernel)),
        (1,) * len(kernel),
        1,
    )
    pool = MaxPool("p", k, s, pads, d)
    layers = [conv, *([Relu("r")] if relu else []), pool]
    out = pool.out_shape(conv.out_shape(shape))
    flat = prod(out)
    layers += [Reshape("f", (flat,)), Dense("d", rng.normal(size=(3, flat)), rng.normal(size=3))]
    return network(shape, layers)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("radius", [0.01, 0.2])
def test_numeric_matches_onnxruntime(case: tuple, radius: float) -> None:
    rng = np.random.default_rng(3)
    net = conv_pool_net(case, rng)
    center = rng.random(net.input.size)
    box = Box(center - radius, center + radius)
    result = prune(net, box)
    assert result.report["maxpools_rewritten"] == 1
    assert isinstance(result.network.layers[1], MaxTree)
    x = np.concatenate([box.sample(3000, rng), box.corners_and_center()])
    ref = run_network(net, x).astype(np.float64)
    ours = run_network(result.network, x).astype(np.float64)
    assert mismatch(ref, ours).max() <= TOLERANCE
    numpy_ours = result.network.forward(x, np.float32).astype(np.float64)
    assert mismatch(ours, numpy_ours).max() <= TOLERANCE
    assert result.network.relu_count() == onnx_relu_elements(result.network)
    if radius == 0.01:  # a small box resolves windows: fewer ReLUs than the full tree
        assert result.network.relu_count() < result.report["relus_full_tree"] / 4


# -- soundness ------------------------------------------------------------------------
def test_dense_sampling_never_differs() -> None:
    rng = np.random.default_rng(11)
    net = conv_pool_net(CASES[0], rng)
    center = rng.random(net.input.size)
    box = Box(center - 0.05, center + 0.05)
    result = prune(net, box)
    assert result.report["pruned"]["p"]["elements_kept"] < 4 * 3 * 3 * 10
    for seed in range(5):
        x = Box(box.lo, box.hi).sample(20_000, np.random.default_rng(seed))
        a = net.forward(x, np.float32).astype(np.float64)
        b = result.network.forward(x, np.float32).astype(np.float64)
        assert mismatch(a, b).max() <= TOLERANCE
    # every removal holds on the samples: the dominating element is never smaller
    z = net.layers[0].forward(x.reshape(-1, *net.input.sample_shape)).reshape(len(x), -1)
    for e in result.certificate:
        if e.claim == "dominated":
            big = 0.0 if e.where["by"] == "zero" else z[:, e.where["by"]]
            small = 0.0 if e.where["element"] == "zero" else z[:, e.where["element"]]
            assert np.all(np.asarray(big) - small >= 0)


def test_stacked_pools_claims_hold_for_the_rewritten_values() -> None:
    """The second pool reads the first one's MaxTree: its claims are proved on the
    network as rewritten so far, and hold on its float32 values."""
    rng = np.random.default_rng(0)
    conv = Conv(
        "c",
        rng.normal(size=(3, 1, 2, 2)),
        rng.normal(size=3) * 0.1,
        (1, 1),
        (0, 0, 0, 0),
        (1, 1),
        1,
    )
    first = MaxPool("p1", (2, 2), (1, 1), (0, 0, 0, 0), (1, 1))
    second = MaxPool("p2", (3, 3), (3, 3), (1, 1, 1, 1), (1, 1))
    net = network((1, 9, 9), [conv, Relu("r"), first, second])
    center = rng.random(81)
    box = Box(center - 0.05, center + 0.05)
    result = prune(net, box)
    new = result.network
    assert [lay.kind for lay in new.layers] == ["conv", "maxtree", "maxtree"]
    x = np.concatenate([box.sample(20_000, rng), box.corners_and_center()])
    assert mismatch(run_network(net, x), run_network(new, x)).max() <= TOLERANCE
    h = new.layers[1].forward(new.layers[0].forward(x.reshape(-1, 1, 9, 9).astype(np.float32)))
    h = h.reshape(len(x), -1).astype(np.float64)
    claims = [e.where for e in result.certificate if e.claim == "dominated"]
    second_claims = [w for w in claims if w["layer"] == "p2"]
    assert second_claims
    for w in second_claims:
        assert np.all(h[:, w["by"]] >= h[:, w["element"]])


def test_lowering_is_the_tree_everywhere_and_bounds_enclose() -> None:
    rng = np.random.default_rng(5)
    for case in CASES:
        net = conv_pool_net(case, rng)
        center = rng.random(net.input.size)
        box = Box(center - 0.2, center + 0.2)
        new = prune(net, box).network
        steps = steps_of(new)
        outside = rng.normal(size=(200, net.input.size)) * 3  # far off the domain too
        assert np.allclose(forward_steps(steps, outside)[-1], new.forward(outside), atol=1e-9)
        bounds = crown_bounds(steps, box.lo, box.hi)
        y = new.forward(box.sample(2000, rng), np.float32).reshape(2000, -1)
        assert np.all(y >= bounds.lo[-1][0]) and np.all(y <= bounds.hi[-1][0])


def test_tree_gradient_matches_finite_differences() -> None:
    net, box = golden_net()
    new = prune(net, box).network
    x = box.sample(1, np.random.default_rng(0))
    g = np.array([[1.0, -0.5]])
    _, grad = new.gradient(x, g)
    eps = 1e-6
    fd = [
        float(((new.forward(x + eps * e) - new.forward(x - eps * e)) * g).sum() / (2 * eps))
        for e in np.eye(8)
    ]
    assert np.allclose(grad.reshape(-1), fd, atol=1e-6)


def test_exported_tree_imports_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The compile path re-imports its output (verification, gates): the exported
    subgraph becomes the same MaxTree again."""
    import onnx

    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network

    rng = np.random.default_rng(4)
    for net, box in [golden_net(), (conv_pool_net(CASES[1], rng), None)]:
        if box is None:
            center = rng.random(net.input.size)
            box = Box(center - 0.1, center + 0.1)
        new = prune(net, box).network
        onnx.save(to_onnx(new), tmp_path / "m.onnx")
        back = import_network(load_model(tmp_path / "m.onnx"))
        assert [lay.kind for lay in back.layers] == [lay.kind for lay in new.layers]
        assert back.relu_count() == new.relu_count()
        x = rng.normal(size=(50, net.input.size))  # the same function everywhere
        assert np.array_equal(back.forward(x), new.forward(x))


# -- negative ---------------------------------------------------------------------------
def test_no_domain_no_pruning() -> None:
    net, _ = golden_net()
    result = MaxPoolToRelu().run(net, PassContext(None, PRUNE))
    assert not any(isinstance(lay, MaxTree) for lay in result.network.layers)
    assert result.report["pruned"] == {}


def test_a_tie_within_float32_rounding_is_not_claimed() -> None:
    """z0 = x0 + x1 and z1 = x1 + x2 with x0 = x2 pinned to the same point: z0 >= z1 holds
    in real arithmetic, but float32 may round the two sums differently; no removal."""
    layers = [conv1d("c", [1.0, 1.0]), MaxPool("p", (2,), (2,), (0, 0), (1,))]
    net = network((1, 3), layers)
    box = Box(np.array([0.3, 0.1, 0.3]), np.array([0.3, 0.9, 0.3]))
    result = prune(net, box)
    assert not [e for e in result.certificate if e.claim == "dominated"]
    assert result.network.relu_count() == 1


def test_unproved_identity_falls_back_to_the_full_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    net, box = golden_net()
    refused = max_tree_proof.Proof("forced", False, "sat", 0.0)
    monkeypatch.setattr(max_tree_proof, "relu_proof", lambda k: refused)
    result = prune(net, box)
    assert not any(isinstance(lay, MaxTree) for lay in result.network.layers)
    assert "z3 did not prove forced" in result.report["pruned"]["p"]["refused"]
    assert not [e for e in result.certificate if e.claim == "dominated"]


def test_malformed_trees_are_refused() -> None:
    with pytest.raises(ValueError, match="src"):
        MaxTree("t", n_in=3, out=(1,), src=np.array([4]), pick=np.array([0]))
    with pytest.raises(ValueError, match="pair"):
        MaxTree(
            "t",
            n_in=3,
            out=(1,),
            src=np.array([0]),
            pairs=((np.array([0]), np.array([1])),),
            pick=np.array([0]),
        )
    with pytest.raises(ValueError, match="pick"):
        MaxTree("t", n_in=3, out=(2,), src=np.array([0]), pick=np.array([0]))


def test_identities_are_proved() -> None:
    assert all(max_tree_proof.tree_proof(k).equivalent for k in (2, 3, 5, 9))
    assert max_tree_proof.relu_proof(4).equivalent


def test_stable_relu_after_the_tree_reads_the_right_bounds() -> None:
    """A Dense/ReLU pair after the MaxTree: stable_relu maps layers to analysis steps
    past the tree's several steps; its removals stay sound on samples."""
    from relugate.passes.stable_relu import StableRelu
    from relugate.passes.stable_relu_linear import step_index

    rng = np.random.default_rng(2)
    base = conv_pool_net(CASES[0], rng)
    flat = base.shapes()[-2][0]
    hidden = Dense("h", rng.normal(size=(40, flat)), rng.normal(size=40) * 2)
    layers = [
        *base.layers[:-1],
        hidden,
        Relu("rh"),
        Dense("o", rng.normal(size=(2, 40)), np.zeros(2)),
    ]
    net = network(base.input.sample_shape, layers)
    center = rng.random(net.input.size)
    box = Box(center - 0.05, center + 0.05)
    pruned = prune(net, box).network
    steps = steps_of(pruned)
    index = step_index(pruned)
    relu_at = next(i for i, lay in enumerate(pruned.layers) if lay.name == "rh")
    assert steps[int(index[relu_at])].layer.name == "rh"
    result = StableRelu().run(pruned, PassContext(box, {"stability": "crown"}))
    x = box.sample(5000, rng)
    a = net.forward(x, np.float32).astype(np.float64)
    b = result.network.forward(x, np.float32).astype(np.float64)
    assert mismatch(a, b).max() <= TOLERANCE


# -- public benchmark ----------------------------------------------------------------
@pytest.mark.benchmarks
def test_verivital_pruned_matches_onnxruntime(benchmarks) -> None:  # type: ignore[no-untyped-def]
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network
    from relugate.compiler.onnx_run import run_batch
    from relugate.compiler.spec import read_vnnlib

    folder = benchmarks / "verivital"
    model = folder / "Convnet_maxpool.onnx"
    net = import_network(load_model(model))
    spec = sorted((folder / "specs").glob("*.vnnlib"))[0]
    domain = read_vnnlib(spec).domain()
    result = prune(net, domain)
    pruned = result.network
    assert pruned.stats()["maxpools"] == 0 and pruned.relu_count() < net.relu_count() / 10
    assert pruned.relu_count() == onnx_relu_elements(pruned)
    x = np.concatenate([domain.sample(2000, np.random.default_rng(8)), domain.corners_and_center()])
    ref = run_batch(str(model), net.input, x).astype(np.float64)
    ours = run_network(pruned, x).astype(np.float64)
    assert mismatch(ref, ours).max() <= TOLERANCE and np.abs(ref - ours).max() <= TOLERANCE
