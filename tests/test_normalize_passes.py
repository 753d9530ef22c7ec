"""The normalization passes: golden, numeric (onnxruntime), soundness (sampling
and PGD), and negative tests for each, plus the pipeline's instruments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import network
from conftest import make_model, save_model
from onnx import helper

from relugate.compiler.domain import Box
from relugate.compiler.errors import EquivalenceError
from relugate.compiler.exporter import to_onnx
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.instruments import DumpIR, VerifyEach
from relugate.compiler.layers import Conv, Dense, MaxPool, Relu, Reshape, Scale, Transpose
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_batch, run_network
from relugate.compiler.pipeline import Pipeline, default_passes
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.base import PassContext, PassResult
from relugate.passes.drop_identity import DropIdentity
from relugate.passes.fold_layout import FoldLayout
from relugate.passes.fold_scale import FoldScale
from relugate.passes.merge_affine import MergeAffine

RNG = np.random.default_rng(7)


def rand(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def kinds(net: Network) -> list[str]:
    return [layer.kind for layer in net.layers]


def assert_equivalent(before: Network, after: Network, box: Box, samples: int = 2000) -> None:
    """Dense sampling in float32 plus PGD on the float64 difference."""
    x = np.concatenate([box.corners_and_center(), box.sample(samples, RNG)])
    a, b = before.forward(x, np.float32), after.forward(x, np.float32)
    assert mismatch(a, b).max() <= TOLERANCE
    worst = max_difference(before, after, box, np.random.default_rng(0), starts=4, steps=25)
    scale = max(1.0, float(np.abs(before.forward(worst.x)).max()))
    assert worst.value / scale <= TOLERANCE


def assert_matches_onnxruntime(before: Network, after: Network, box: Box) -> None:
    x = box.sample(256, RNG)
    assert mismatch(run_network(before, x), run_network(after, x)).max() <= TOLERANCE


def unit_box(net: Network) -> Box:
    return Box(-np.ones(net.input.size), np.ones(net.input.size))


# -- fold_layout -----------------------------------------------------------
def nhwc_head() -> Network:
    return network(
        (4, 3, 2),
        [
            Transpose("t", perm=(2, 0, 1)),
            Reshape("f", shape=(24,)),
            Dense("d", weight=rand(5, 24), bias=rand(5)),
        ],
    )


def test_fold_layout_golden_absorbs_transpose_into_dense() -> None:
    net = nhwc_head()
    result = FoldLayout().run(net, PassContext())
    assert result.changed
    assert kinds(result.network) == ["reshape", "dense"]
    assert result.certificate[0].where["replaced"] == ["t", "f"]


def test_fold_layout_numeric_and_soundness() -> None:
    net = nhwc_head()
    after = FoldLayout().run(net, PassContext()).network
    assert_matches_onnxruntime(net, after, unit_box(net))
    assert_equivalent(net, after, unit_box(net))


def test_fold_layout_collapses_reshape_chains_and_transposes() -> None:
    net = network(
        (2, 3, 4),
        [
            Reshape("a", shape=(6, 4)),
            Reshape("b", shape=(24,)),
            Relu("r"),
            Reshape("c", shape=(4, 6)),
            Relu("r2"),
        ],
    )
    after = FoldLayout().run(net, PassContext()).network
    assert kinds(after) == ["reshape", "relu", "reshape", "relu"]
    t = network(
        (2, 3, 4), [Transpose("t1", perm=(1, 2, 0)), Transpose("t2", perm=(2, 0, 1)), Relu("r")]
    )
    folded = FoldLayout().run(t, PassContext()).network
    assert kinds(folded) == ["transpose", "relu"]
    assert_equivalent(t, folded, unit_box(t), samples=200)


def test_fold_layout_negative_keeps_needed_layout() -> None:
    """A Transpose feeding a Conv (not a Dense) is a real layout change: kept."""
    net = network(
        (5, 5, 2),
        [
            Transpose("t", perm=(2, 0, 1)),
            Conv(
                "c",
                weight=rand(3, 2, 2, 2),
                bias=rand(3),
                strides=(1, 1),
                pads=(0, 0, 0, 0),
                dilations=(1, 1),
            ),
        ],
    )
    result = FoldLayout().run(net, PassContext())
    assert not result.changed
    assert kinds(result.network) == ["transpose", "conv"]


# -- fold_scale ------------------------------------------------------------
def normalized_mlp() -> Network:
    return network(
        (1, 4),
        [
            Scale("sub", mul=np.ones(()), add=-rand(1, 4)),
            Scale("div", mul=1 / (np.abs(rand(1, 4)) + 0.5), add=np.zeros(())),
            Reshape("flat", shape=(4,)),
            Dense("d1", weight=rand(6, 4), bias=np.zeros(6)),
            Scale("bias", mul=np.ones(()), add=rand(6)),
            Relu("r"),
            Dense("d2", weight=rand(2, 6), bias=rand(2)),
            Scale("bn", mul=rand(2), add=rand(2)),
        ],
    )


def test_fold_scale_golden() -> None:
    result = FoldScale().run(normalized_mlp(), PassContext())
    assert kinds(result.network) == ["reshape", "dense", "relu", "dense"]
    assert result.report["scales_left"] == 0
    assert len(result.certificate) == 4


def test_fold_scale_numeric_and_soundness() -> None:
    net = normalized_mlp()
    after = FoldScale().run(net, PassContext()).network
    box = Box(-3 * np.ones(4), 3 * np.ones(4))
    assert_matches_onnxruntime(net, after, box)
    assert_equivalent(net, after, box)


def conv_net(pads: tuple[int, ...], scale_before: Scale) -> Network:
    return network(
        (2, 6, 6),
        [
            scale_before,
            Conv(
                "c",
                weight=rand(4, 1, 3, 3),
                bias=rand(4),
                strides=(1, 1),
                pads=pads,
                dilations=(1, 1),
                group=2,
            ),
            Scale("bn", mul=rand(4, 1, 1), add=rand(4, 1, 1)),
            Relu("r"),
        ],
    )


def test_fold_scale_into_grouped_conv_without_padding() -> None:
    net = conv_net((0, 0, 0, 0), Scale("norm", mul=rand(2, 1, 1), add=rand(2, 1, 1)))
    after = FoldScale().run(net, PassContext()).network
    assert kinds(after) == ["conv", "relu"]
    assert_matches_onnxruntime(net, after, unit_box(net))
    assert_equivalent(net, after, unit_box(net), samples=300)


def test_fold_scale_negative_refuses_inexact_folds() -> None:
    """A shift before a padded Conv, or a per-pixel scale, cannot fold exactly: kept."""
    padded = conv_net((1, 1, 1, 1), Scale("norm", mul=rand(2, 1, 1), add=rand(2, 1, 1)))
    after = FoldScale().run(padded, PassContext()).network
    assert kinds(after) == ["scale", "conv", "relu"]  # BatchNorm after the conv still folds
    assert_equivalent(padded, after, unit_box(padded), samples=300)
    per_pixel = conv_net((0, 0, 0, 0), Scale("norm", mul=rand(2, 6, 6), add=np.zeros(())))
    assert kinds(FoldScale().run(per_pixel, PassContext()).network)[0] == "scale"


# -- merge_affine ----------------------------------------------------------
def test_merge_affine_golden_numeric_soundness() -> None:
    net = network(
        (8,),
        [Dense("a", weight=rand(4, 8), bias=rand(4)), Dense("b", weight=rand(3, 4), bias=rand(3))],
    )
    result = MergeAffine().run(net, PassContext())
    assert kinds(result.network) == ["dense"]
    assert result.network.param_count() < net.param_count()
    assert_matches_onnxruntime(net, result.network, unit_box(net))
    assert_equivalent(net, result.network, unit_box(net))


def test_merge_affine_negative_keeps_bottleneck() -> None:
    """8 -> 2 -> 8 has 42 params; merged 8 -> 8 would have 72: not merged."""
    net = network(
        (8,),
        [Dense("a", weight=rand(2, 8), bias=rand(2)), Dense("b", weight=rand(8, 2), bias=rand(8))],
    )
    result = MergeAffine().run(net, PassContext())
    assert not result.changed and kinds(result.network) == ["dense", "dense"]


# -- drop_identity ---------------------------------------------------------
def test_drop_identity_golden_and_negative() -> None:
    net = network(
        (2, 3),
        [
            Scale("one", mul=np.ones(()), add=np.zeros(())),
            Reshape("same", shape=(2, 3)),
            Transpose("id", perm=(0, 1)),
            Transpose("swap", perm=(1, 0)),
            Relu("r"),
        ],
    )
    result = DropIdentity().run(net, PassContext())
    assert [layer.name for layer in result.network.layers] == ["swap", "r"]
    assert result.report["dropped"] == ["one", "same", "id"]
    assert_equivalent(net, result.network, unit_box(net), samples=100)
    again = DropIdentity().run(result.network, PassContext())
    assert not again.changed


# -- the pipeline on an ONNX model, against onnxruntime ----------------------
def exported_style_model(tmp_path: Path) -> Path:
    """NHWC input, normalization, conv + BatchNorm, max-pool, transpose, flatten, MatMul+Add."""
    w = {
        "mean": np.array([0.5, 0.4, 0.3], np.float32),
        "std": np.array([0.2, 0.25, 0.3], np.float32),
        "W": rand(4, 3, 3, 3) / np.float32(np.sqrt(27)),
        "B": rand(4),
        "g": np.abs(rand(4)) + 0.5,
        "beta": rand(4),
        "m": rand(4),
        "v": np.abs(rand(4)) + 0.5,
        "shape": np.array([0, -1], np.int64),
        "D": rand(36, 5) / np.float32(6),
        "Db": rand(5),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"], name="sub"),
        helper.make_node("Div", ["s", "std"], ["n"], name="div"),
        helper.make_node("Transpose", ["n"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["t", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["p"], ["pt"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["pt", "shape"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "D"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "Db"], ["y"], name="fc_bias"),
    ]
    model = make_model(nodes, [("x", ["N", 6, 6, 3])], [("y", ["N", 5])], w)
    return save_model(model, tmp_path / "nhwc.onnx")


def test_pipeline_normalizes_exported_style_model(tmp_path: Path) -> None:
    path = exported_style_model(tmp_path)
    loaded = load_model(path)
    net = import_network(loaded)
    box = Box(np.zeros(net.input.size), np.ones(net.input.size))
    verifier = VerifyEach(box, samples=128)
    result = Pipeline(default_passes(), [verifier]).run(net, PassContext(domain=box))
    # The input transpose is needed (it feeds a conv); normalization, BatchNorm, the output
    # transpose and the bias Add are folded away.
    assert kinds(result.network) == [
        "scale",
        "transpose",
        "conv",
        "relu",
        "maxpool",
        "reshape",
        "dense",
    ]
    # the normalization Scale stays: it shifts, and the conv pads with zeros
    assert set(verifier.max_error) <= {"fold_layout", "fold_scale", "merge_affine", "drop_identity"}
    exported = to_onnx(result.network)
    assert [i.name for i in exported.graph.input] == ["x"]
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = box.sample(300, RNG)
    reference = run_batch(str(path), net.input, x)
    compiled = run_batch(exported, TensorSpec("x", net.input.shape, True, "N"), x)
    assert mismatch(reference, compiled).max() <= TOLERANCE


class BreakingPass:
    """A deliberately wrong pass: flips the sign of the last bias."""

    name = "breaking"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        last = net.layers[-1]
        assert isinstance(last, Dense)
        broken = Dense(last.name, weight=last.weight, bias=-last.bias + 1)
        return PassResult(net.with_layers([*net.layers[:-1], broken]), True)


def test_verify_each_catches_a_broken_pass() -> None:
    net = normalized_mlp()
    pipeline = Pipeline([FoldScale(), BreakingPass()], [VerifyEach(None, samples=32)])
    with pytest.raises(EquivalenceError, match="'breaking'"):
        pipeline.run(net, PassContext())


def test_dump_ir_writes_every_step(tmp_path: Path) -> None:
    dump = DumpIR(tmp_path / "ir")
    Pipeline(default_passes(), [dump]).run(normalized_mlp(), PassContext())
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == [
        "00_import.onnx",
        "01_fold_layout.onnx",
        "02_fold_scale.onnx",
        "03_merge_affine.onnx",
        "04_drop_identity.onnx",
        "05_maxpool_to_relu.onnx",
        "06_stable_relu.onnx",
    ]


def test_pipeline_leaves_maxpool_and_relu_count() -> None:
    net = network(
        (1, 4, 4),
        [
            Relu("r"),
            MaxPool("p", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)),
        ],
    )
    result = Pipeline(default_passes()).run(net, PassContext())
    assert result.network.relu_count() == 16 and not any(s.changed for s in result.steps)
