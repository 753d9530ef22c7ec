"""maxpool_to_relu: golden layers, onnxruntime equivalence, attacks, z3 template proofs,
refusals, and the verivital network."""

from __future__ import annotations

from dataclasses import replace
from math import prod
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import network

from relugate.compiler.domain import Box
from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_network
from relugate.passes.analysis import max_template
from relugate.passes.base import PassContext, PassResult
from relugate.passes.maxpool_to_relu import MaxPoolToRelu, tree_layers

U32 = 2.0**-24

ON = {"maxpool": "relu", "maxpool_prune": False}
"""The pass is opt-in; these tests check the full tree (``test_max_prune`` the pruned one)."""


def pool(kernel, strides=None, pads=None, dilations=None, name="pool") -> MaxPool:
    rank = len(kernel)
    return MaxPool(
        name,
        kernel=tuple(kernel),
        strides=tuple(strides or (1,) * rank),
        pads=tuple(pads or (0,) * (2 * rank)),
        dilations=tuple(dilations or (1,) * rank),
    )


def rewrite(net: Network, domain: Box | None = None) -> PassResult:
    result = MaxPoolToRelu().run(net, PassContext(domain, ON))
    assert not any(isinstance(lay, MaxPool) for lay in result.network.layers), result.report
    return result


def worst(net: Network, new: Network, x: np.ndarray) -> tuple[float, float]:
    """(max abs diff, max relative mismatch) of the two networks in onnxruntime."""
    a, b = run_network(net, x).astype(np.float64), run_network(new, x).astype(np.float64)
    return float(np.abs(a - b).max()), float(mismatch(a, b).max())


def layout(net: Network) -> list[tuple[str, int, tuple[int, ...]]]:
    """(kind, channels, spatial shape) of every layer's output."""
    return [(r["kind"], r["out"][0], tuple(r["out"][1:])) for r in net.summary()]


def box_for(net: Network, lo: float, hi: float) -> Box:
    n = prod(net.input.sample_shape)
    return Box(np.full(n, lo), np.full(n, hi))


# -- golden ----------------------------------------------------------------
def test_golden_2x2_stride_2_after_relu() -> None:
    net = network((3, 8, 8), [Relu("r"), pool((2, 2), (2, 2))])
    result = rewrite(net)
    # per channel: 2 pairs x [a - b, b], then 1 pair of the 2 maxima, then recombination
    assert layout(result.network) == [("relu", 3, (8, 8))] + [
        (kind, c, (4, 4)) for kind, c in [("conv", 12), ("relu", 12), ("conv", 6), ("relu", 6)]
    ] + [("conv", 3, (4, 4))]
    first = result.network.layers[1]
    assert isinstance(first, Conv) and first.kernel == (2, 2) and first.strides == (2, 2)
    assert first.group == 3 and all(
        isinstance(lay, Conv) and lay.kernel == (1, 1) for lay in result.network.layers[3::2]
    )
    assert result.report["maxpools_rewritten"] == 1 and result.report["relus_added"] == 6 * 16 * 3
    (entry,) = result.certificate
    assert entry.claim == "equivalent" and entry.where["layer"] == "pool"
    assert entry.justification.startswith("z3: tree(4, nonneg) == max over 4 reals >= 0, unsat")


def test_golden_3x3_stride_2_pad_1_shifted_on_domain() -> None:
    net = network((2, 7, 7), [pool((3, 3), (2, 2), (1, 1, 1, 1))])
    result = rewrite(net, box_for(net, -3.0, 2.0))
    # k = 9: values 9 -> 5 -> 3 -> 2 -> 1, nonneg form after the shift
    channels = [18, 18, 10, 10, 6, 6, 4, 4, 2]
    kinds = ["conv", "relu"] * 4 + ["conv"]
    assert layout(result.network) == [("scale", 2, (7, 7))] + [
        (kind, c, (4, 4)) for kind, c in zip(kinds, channels, strict=True)
    ]
    scale, last = result.network.layers[0], result.network.layers[-1]
    assert isinstance(scale, Scale) and isinstance(last, Conv)
    assert np.all(scale.add.reshape(-1) >= 3.0) and np.all(last.bias == -scale.add.reshape(-1))
    (entry,) = result.certificate
    assert entry.where["on_domain"] and "max0(x - s) + s" in entry.justification


# -- numeric against onnxruntime -------------------------------------------
CONFIGS = [  # (sample shape, kernel, strides, pads, dilations)
    ((2, 9), (1,), (1,), None, None),
    ((2, 9), (2,), (2,), None, None),
    ((3, 10), (3,), (1,), (1, 1), None),
    ((1, 12), (4,), (3,), (0, 2), None),
    ((2, 11), (5,), (2,), (2, 2), None),
    ((2, 13), (3,), (2,), (1, 0), (2,)),
    ((1, 6, 6), (1, 1), (2, 2), None, None),
    ((3, 6, 6), (2, 2), (2, 2), None, None),
    ((2, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1), None),
    ((2, 8, 9), (2, 3), (1, 2), (0, 1, 1, 1), None),
    ((1, 9, 9), (3, 1), (2, 1), None, (2, 1)),
    ((4, 9, 8), (4, 4), (4, 4), None, None),
    ((2, 10, 10), (5, 5), (3, 3), (2, 2, 2, 2), None),
    ((2, 11, 10), (2, 5), (2, 1), (1, 0, 0, 2), (3, 1)),
    ((3, 9, 9), (3, 3), (1, 1), (0, 0, 2, 2), (2, 2)),
]


def _has_pads(cfg) -> bool:
    return bool(cfg[3]) and any(cfg[3])


def head(prefix: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[Layer]:
    """What feeds the pool: a ReLU, nothing, a padded Conv, or Dense + Reshape."""
    c, rank, n = shape[0], len(shape) - 1, prod(shape)
    if prefix == "relu":
        return [Relu("r")]
    if prefix == "conv":
        w = rng.normal(size=(c, c, *(3,) * rank))
        ones = (1,) * rank
        return [
            Conv(
                "c", weight=w, bias=rng.normal(size=c), strides=ones, pads=ones * 2, dilations=ones
            )
        ]
    if prefix == "dense":
        dense = Dense("d", weight=rng.normal(size=(n, 5)), bias=rng.normal(size=n))
        return [dense, Reshape("rs", shape=shape)]
    return []


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("prefix", ["relu", "input", "conv", "dense"])
def test_numeric_matches_onnxruntime(cfg, prefix) -> None:
    shape, kernel, strides, pads, dil = cfg
    rng = np.random.default_rng(prod(shape) + len(prefix))
    in_shape = (5,) if prefix == "dense" else shape
    net = network(in_shape, [*head(prefix, shape, rng), pool(kernel, strides, pads, dil)])
    domain = box_for(net, -2.0, 1.0) if _has_pads(cfg) and prefix != "relu" else None
    result = rewrite(net, domain)
    x = domain.sample(64, rng) if domain else rng.normal(size=(64, *in_shape))
    abs_err, rel_err = worst(net, result.network, x)
    assert rel_err <= TOLERANCE and abs_err <= 1e-5, (abs_err, rel_err)
    if domain is not None and prefix in ("conv", "dense"):  # the shift went into the bias
        assert not any(isinstance(lay, Scale) for lay in result.network.layers)


def test_stacked_pools_and_a_nonnegative_domain() -> None:
    """A pool after a pool after a ReLU is >= 0 (no shift); a domain with a lower bound
    >= 0 needs no shift either; the report counts what changed."""
    second = pool((3, 3), (1, 1), (1, 1, 1, 1), name="p2")
    net = network((2, 12, 12), [Relu("r"), pool((2, 2), (2, 2), name="p1"), second])
    result = rewrite(net)
    assert [e.where["form"] for e in result.certificate] == ["nonneg", "nonneg"]
    x = np.random.default_rng(7).normal(size=(64, 2, 12, 12))
    assert worst(net, result.network, x)[1] <= TOLERANCE
    positive = network((2, 6, 6), [pool((3, 3), (2, 2), (1, 1, 1, 1))])
    domain = box_for(positive, 0.5, 2.0)
    result = rewrite(positive, domain)
    (entry,) = result.certificate
    assert entry.where["shift"] is None and entry.where["on_domain"]
    assert not any(isinstance(lay, Scale) for lay in result.network.layers)
    assert (
        worst(positive, result.network, domain.sample(64, np.random.default_rng(8)))[1] <= 4 * U32
    )
    report = result.report
    assert report["params_after"] > report["params_before"] == 0
    assert report["flops_after"] > report["flops_before"] and report["proof_ms"]


# -- soundness: try to break it --------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_ties_are_exact(cfg) -> None:
    shape, kernel, strides, pads, dil = cfg
    net = network(shape, [pool(kernel, strides, pads, dil)])
    domain = box_for(net, -2.0, 2.0) if _has_pads(cfg) else None
    new = rewrite(net, domain).network
    x = np.random.default_rng(1).integers(-2, 3, size=(200, *shape)).astype(np.float32)
    x[:20] = 0.0
    x[20:40] = -2.0
    assert np.array_equal(run_network(net, x), run_network(new, x))


def test_large_magnitudes_and_near_ties() -> None:
    """Error within a few float32 ulps of the largest magnitude in the sample."""
    net = network((2, 9, 9), [pool((3, 3), (2, 2))])
    new = rewrite(net).network
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 2, 9, 9)).astype(np.float32) * 1e6
    near = np.nextafter(base, np.float32(np.inf)) * (rng.random(base.shape) < 0.5)
    x = np.concatenate([base, np.where(near == 0, base, near), -np.abs(base), np.abs(base)])
    a, b = run_network(net, x).astype(np.float64), run_network(new, x).astype(np.float64)
    scale = np.abs(x).reshape(len(x), -1).max(axis=1, keepdims=True)
    assert np.all(np.abs(a - b) <= 20 * U32 * scale)  # depth 4: 4 (depth + 1) ulps


def test_signed_form_error_is_bounded_by_the_window_magnitude() -> None:
    """Without a sign guarantee the chain max(a, b) = relu(a - b) + relu(b) - relu(-b)
    cancels: its float32 error scales with max |window|, not with the result."""
    net = network((1, 16), [pool((4,), (4,))])
    new = rewrite(net).network
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 1, 16)) * 1e-3
    x[:, :, 1::2] = -rng.random((400, 1, 8)) * 1e4  # huge negative partners, tiny max
    a, b = run_network(net, x), run_network(new, x)
    window = np.abs(x.reshape(400, 4, 4)).max(axis=2)
    assert np.all(np.abs(a - b) <= 8 * U32 * window)


def test_negative_inputs_with_padding_need_the_shift() -> None:
    net = network((2, 6, 6), [pool((3, 3), (1, 1), (1, 1, 1, 1))])
    domain = box_for(net, -5.0, -1.0)
    new = rewrite(net, domain).network
    x = np.concatenate([domain.sample(100, np.random.default_rng(4)), domain.corners_and_center()])
    abs_err, _ = worst(net, new, x)
    assert abs_err <= 8 * U32 * 5
    # the same tree on zero padding without the shift returns 0 at the border: caught
    naive = net.with_layers(tree_layers(net.layers[0], 2, max_template.build(9, "signed"), None))
    assert worst(net, naive, x)[0] >= 1.0


def test_conv_then_pool_with_padding_on_domain() -> None:
    rng = np.random.default_rng(5)
    conv = Conv(
        "c",
        weight=rng.normal(size=(3, 1, 3, 3)),
        bias=np.full(3, -4.0),
        strides=(1, 1),
        pads=(0, 0, 0, 0),
        dilations=(1, 1),
    )
    net = network((1, 10, 10), [conv, pool((2, 2), (2, 2), (1, 1, 1, 1))])
    domain = box_for(net, 0.0, 1.0)
    result = rewrite(net, domain)
    shifted = result.network.layers[0]
    assert isinstance(shifted, Conv) and np.all(shifted.bias > conv.bias)
    x = np.concatenate([domain.sample(300, rng), domain.corners_and_center()])
    abs_err, rel = worst(net, result.network, x)
    assert rel <= TOLERANCE and abs_err <= 1e-5


# -- z3 template proofs ----------------------------------------------------
@pytest.mark.parametrize("form", max_template.FORMS)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9, 16])
def test_templates_are_proved_and_cached(k, form) -> None:
    proof = max_template.proof(k, form)
    assert proof.equivalent and proof.status == "unsat"
    assert max_template.proof(k, form) is proof
    template = max_template.build(k, form)
    assert template.depth == (k - 1).bit_length()
    a = np.random.default_rng(k).normal(size=(100, k))
    a = np.abs(a) if form == "nonneg" else a
    assert np.allclose(template.evaluate(a), a.max(axis=1), rtol=0, atol=1e-12)


def test_wrong_templates_are_refused() -> None:
    good = max_template.build(4, "signed")
    bad_last = good.matrices[-1].copy()
    bad_last[0, -1] = 1.0  # + relu(-b) instead of - relu(-b)
    wrong = replace(good, matrices=(*good.matrices[:-1], bad_last))
    proof = max_template.prove(wrong)
    assert not proof.equivalent and proof.status == "sat" and proof.counterexample
    a = np.array([proof.counterexample])
    assert not np.isclose(wrong.evaluate(a)[0], a.max())
    # the nonneg tree is not a max over all reals: its claim needs a >= 0
    unsafe = max_template.Template(3, "signed", max_template.build(3, "nonneg").matrices)
    assert not max_template.prove(unsafe).equivalent


def test_pass_refuses_an_unproved_template(monkeypatch) -> None:
    failed = max_template.Proof(4, "signed", False, "sat", 1.0, (0.0, 0.0, 0.0, 1.0))
    monkeypatch.setattr(max_template, "proof", lambda k, form: failed)
    net = network((1, 8), [pool((4,), (4,))])
    result = MaxPoolToRelu().run(net, PassContext(None, ON))
    assert not result.changed and "z3 did not prove" in result.report["maxpools_left"]["pool"]


# -- negative ----------------------------------------------------------------
def test_padding_without_domain_or_relu_is_left_with_a_reason() -> None:
    net = network(
        (2, 6, 6),
        [
            Scale("s", mul=np.ones(1), add=np.ones(1)),
            pool((3, 3), (2, 2), (1, 1, 1, 1), name="pad_pool"),
        ],
    )
    result = MaxPoolToRelu().run(net, PassContext(None, ON))
    assert not result.changed and result.network.layers == net.layers
    assert "-inf padding" in result.report["maxpools_left"]["pad_pool"]
    assert result.report["maxpools_rewritten"] == 0 and result.report["relus_added"] == 0


def test_window_made_only_of_padding_is_a_typed_error() -> None:
    net = network((1, 5), [pool((2,), (1,), (2, 0), name="bad_pool")])
    with pytest.raises(UnsupportedModel, match="bad_pool"):
        MaxPoolToRelu().run(net, PassContext(box_for(net, 0.0, 1.0), ON))


# -- public benchmark ----------------------------------------------------------
@pytest.mark.benchmarks
def test_verivital_rewritten_matches_onnxruntime(benchmarks: Path) -> None:
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network
    from relugate.compiler.onnx_run import run_batch
    from relugate.compiler.spec import read_vnnlib

    folder = benchmarks / "verivital"
    model = folder / "Convnet_maxpool.onnx"
    net = import_network(load_model(model))
    rng = np.random.default_rng(6)
    for spec in sorted((folder / "specs").glob("*.vnnlib"))[:3]:
        domain = read_vnnlib(spec).domain()
        result = rewrite(net, domain)
        assert result.report["flops_after"] > result.report["flops_before"]
        x = np.concatenate([domain.sample(100, rng), domain.corners_and_center()])
        ref = run_batch(str(model), net.input, x).astype(np.float64)
        ours = run_network(result.network, x).astype(np.float64)
        assert mismatch(ref, ours).max() <= TOLERANCE, spec.name


def test_pass_is_off_unless_asked_for() -> None:
    net = network((2, 4, 4), [MaxPool("pool", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1))])
    result = MaxPoolToRelu().run(net, PassContext())
    assert not result.changed and "off" in result.report["reason"]
