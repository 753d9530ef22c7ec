"""Importer tests: every converter in ``onnx_ops.CONVERTERS`` against onnxruntime.

Each model is built with ``onnx.helper``, saved, loaded by the frontend and
imported; ``check_import`` then compares ``Network.forward`` (float32), the
exported model and, for batch-separable networks, the exported model with a
symbolic batch of 7, with onnxruntime on the original file.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, shape_inference
from onnx.reference import ReferenceEvaluator
from onnx_builders import (
    ACT,
    Step,
    assert_close,
    chain,
    check_import,
    f32,
    i64,
    load_and_import,
    step,
)

from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.exporter import to_onnx
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Conv, Dense, MaxPool, Relu, Reshape, Scale, Transpose
from relugate.compiler.onnx_ops import CONVERTERS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def kinds(net) -> list[str]:
    return [layer.kind for layer in net.layers]


def pos(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)


# -- Gemm / MatMul ---------------------------------------------------------
@pytest.mark.parametrize(
    ("trans_b", "alpha", "beta", "bias"),
    [(1, 1.0, 1.0, "vector"), (0, 1.0, 1.0, "row"), (1, 0.5, 2.0, "vector"), (0, 1.5, 1.0, None)],
)
def test_gemm(tmp_path, rng, trans_b, alpha, beta, bias) -> None:
    w = f32(rng, 3, 5) if trans_b else f32(rng, 5, 3)
    c = {"vector": f32(rng, 3), "row": f32(rng, 1, 3), None: None}[bias]
    inputs = (ACT, w) if c is None else (ACT, w, c)
    attrs = {"transB": trans_b, "alpha": alpha, "beta": beta}
    model = chain([1, 5], [Step("Gemm", inputs, attrs), step("Relu")])
    net = check_import(model, tmp_path, batched=True)
    assert kinds(net) == ["dense", "relu"]
    dense = net.layers[0]
    assert isinstance(dense, Dense)
    expected = alpha * (w if trans_b else w.T)
    np.testing.assert_allclose(dense.weight, expected, rtol=1e-6)
    expected_bias = np.zeros(3) if c is None else beta * c.reshape(-1)
    np.testing.assert_allclose(dense.bias, expected_bias, rtol=1e-6)


def test_matmul_activation_times_weight_with_bias(tmp_path, rng) -> None:
    steps = [
        step("MatMul", ACT, f32(rng, 6, 4)),
        step("Add", ACT, f32(rng, 4)),
        step("Relu"),
        step("MatMul", ACT, f32(rng, 4, 2)),
    ]
    net = check_import(chain([1, 6], steps), tmp_path, batched=True)
    assert kinds(net) == ["dense", "scale", "relu", "dense"]


def test_matmul_weight_times_vector_without_batch(tmp_path, rng) -> None:
    """``W @ x`` on a 1-D input, as in VNN-COMP's test_small / test_tiny."""
    steps = [
        step("MatMul", f32(rng, 5, 3), ACT),
        step("Add", f32(rng, 5), ACT),
        step("Relu"),
        step("MatMul", f32(rng, 2, 5), ACT),
        step("Add", ACT, f32(rng, 2)),
    ]
    net = check_import(chain([3], steps), tmp_path, batched=False)
    assert kinds(net) == ["dense", "scale", "relu", "dense", "scale"]
    assert net.input.shape == (3,) and not net.input.has_batch
    assert net.output.shape == (2,) and not net.output.has_batch


def test_matmul_vector_times_weight_without_batch(tmp_path, rng) -> None:
    model = chain([4], [step("MatMul", ACT, f32(rng, 4, 3)), step("Relu")])
    net = check_import(model, tmp_path, batched=False)
    assert kinds(net) == ["dense", "relu"]


@pytest.mark.benchmarks
@pytest.mark.parametrize(
    ("file", "batched"),
    [
        ("vnncomp2021_test/test_small.onnx", False),
        ("vnncomp2021_test/test_nano.onnx", False),
        ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", True),
        ("mnistfc/mnist-net_256x2.onnx", True),
        ("verivital/Convnet_maxpool.onnx", True),
    ],
)
def test_benchmark_models(tmp_path, benchmarks, file, batched) -> None:
    """The public VNN-COMP models (IR 3 weights-as-inputs, W @ x on 1-d inputs, opset 8/9)."""
    model = onnx.load(str(benchmarks / file))
    check_import(model, tmp_path, batched=batched)


# -- Conv ------------------------------------------------------------------
CONV_ATTRS = [
    {},
    {"pads": [1, 1, 1, 1]},
    {"pads": [0, 1, 2, 1], "strides": [2, 1]},
    {"strides": [2, 3], "dilations": [2, 1]},
    {"pads": [2, 0, 1, 2], "strides": [1, 2], "dilations": [1, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [3, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [3, 1]},
    {"auto_pad": "VALID", "strides": [2, 2]},
]


@pytest.mark.parametrize("attrs", CONV_ATTRS, ids=lambda a: str(a) or "plain")
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4)])
def test_conv_2d(tmp_path, rng, attrs, kernel) -> None:
    w, b = f32(rng, 4, 3, *kernel), f32(rng, 4)
    steps = [step("Conv", ACT, w, b, **attrs), step("Relu")]
    net = check_import(chain([1, 3, 9, 8], steps), tmp_path, batched=True)
    assert kinds(net) == ["conv", "relu"]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_same_with_dilations(tmp_path, rng, auto_pad) -> None:
    """onnxruntime refuses SAME with dilations; ONNX's reference evaluator is the oracle."""
    attrs = {"auto_pad": auto_pad, "dilations": [2, 3], "strides": [2, 1]}
    model = chain([1, 2, 9, 8], [step("Conv", ACT, f32(rng, 3, 2, 3, 2), f32(rng, 3), **attrs)])
    _, net = load_and_import(model, tmp_path / "m.onnx")
    x = f32(rng, 1, 2, 9, 8)
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    assert_close(expected, net.forward(x, np.float32), "SAME conv with dilations")
    # H: total pad 4 splits 2+2; W: total pad 3 puts the odd one at the end (UPPER) or start
    assert net.layers[0].pads == ((2, 1, 2, 2) if auto_pad == "SAME_UPPER" else (2, 2, 2, 1))


@pytest.mark.parametrize("group", [2, 6])
def test_conv_grouped_and_depthwise(tmp_path, rng, group) -> None:
    w = f32(rng, 6 if group == 2 else 12, 6 // group, 3, 3)
    steps = [step("Conv", ACT, w, None, group=group, pads=[1, 1, 1, 1], strides=[2, 1])]
    net = check_import(chain([1, 6, 7, 7], steps), tmp_path, batched=True)
    (conv,) = net.layers
    assert isinstance(conv, Conv) and conv.group == group
    np.testing.assert_array_equal(conv.bias, 0)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"pads": [2, 1], "strides": [2]},
        {"dilations": [3]},
        {"auto_pad": "SAME_LOWER", "strides": [2]},
    ],
    ids=str,
)
def test_conv_1d(tmp_path, rng, attrs) -> None:
    steps = [step("Conv", ACT, f32(rng, 5, 2, 3), f32(rng, 5), **attrs), step("Relu")]
    net = check_import(chain([1, 2, 11], steps), tmp_path, batched=True)
    assert kinds(net) == ["conv", "relu"]
    assert len(net.output.sample_shape) == 2


# -- pooling ---------------------------------------------------------------
MAXPOOL_2D = [
    {"kernel_shape": [2, 2]},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 0, 1], "dilations": [2, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
]


@pytest.mark.parametrize("attrs", MAXPOOL_2D, ids=str)
def test_maxpool_2d(tmp_path, rng, attrs) -> None:
    steps = [step("Conv", ACT, f32(rng, 3, 2, 1, 1), None), step("MaxPool", **attrs)]
    net = check_import(chain([1, 2, 9, 9], steps), tmp_path, batched=True)
    assert kinds(net) == ["conv", "maxpool"]


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3]},
        {"kernel_shape": [2], "strides": [2], "pads": [1, 0]},
        {"kernel_shape": [2], "dilations": [3], "pads": [0, 1]},
        {"kernel_shape": [4], "strides": [3], "auto_pad": "SAME_UPPER"},
    ],
    ids=str,
)
def test_maxpool_1d(tmp_path, rng, attrs) -> None:
    net = check_import(chain([1, 3, 10], [step("MaxPool", **attrs)]), tmp_path, batched=True)
    (pool,) = net.layers
    assert isinstance(pool, MaxPool) and len(pool.kernel) == 1


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 2], "strides": [1, 2]},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"kernel_shape": [2, 3], "pads": [0, 1, 1, 2], "strides": [2, 2], "count_include_pad": 1},
        {"kernel_shape": [3, 3], "strides": [3, 3], "ceil_mode": 1},
    ],
    ids=str,
)
def test_average_pool(tmp_path, attrs) -> None:
    net = check_import(chain([1, 3, 9, 9], [step("AveragePool", **attrs)]), tmp_path, batched=True)
    (conv,) = net.layers
    assert isinstance(conv, Conv) and conv.group == 3


def test_average_pool_1d(tmp_path) -> None:
    steps = [step("AveragePool", kernel_shape=[3], strides=[2])]
    net = check_import(chain([1, 2, 9], steps), tmp_path, batched=True)
    assert net.output.sample_shape == (2, 4)


def test_global_average_pool_then_gemm(tmp_path, rng) -> None:
    steps = [
        step("Conv", ACT, f32(rng, 4, 2, 3, 3), f32(rng, 4)),
        step("Relu"),
        step("GlobalAveragePool"),
        step("Flatten"),
        step("Gemm", ACT, f32(rng, 3, 4), f32(rng, 3), transB=1),
    ]
    net = check_import(chain([1, 2, 6, 5], steps), tmp_path, batched=True)
    assert kinds(net) == ["conv", "relu", "conv", "reshape", "dense"]
    assert net.shapes()[3] == (4, 1, 1)


# -- BatchNormalization and input normalization ----------------------------
def bn_inputs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    return f32(rng, n), f32(rng, n), f32(rng, n), pos(rng, n)


def test_batchnorm_after_conv(tmp_path, rng) -> None:
    steps = [
        step("Conv", ACT, f32(rng, 4, 2, 3, 3), f32(rng, 4)),
        step("BatchNormalization", ACT, *bn_inputs(rng, 4), epsilon=1e-3),
        step("Relu"),
    ]
    net = check_import(chain([1, 2, 6, 6], steps), tmp_path, batched=True)
    assert kinds(net) == ["conv", "scale", "relu"]
    assert net.layers[1].mul.shape == (4, 1, 1)


def test_batchnorm_after_gemm(tmp_path, rng) -> None:
    steps = [
        step("Gemm", ACT, f32(rng, 6, 4), f32(rng, 6), transB=1),
        step("BatchNormalization", ACT, *bn_inputs(rng, 6)),
        step("Relu"),
    ]
    net = check_import(chain([1, 4], steps), tmp_path, batched=True)
    assert kinds(net) == ["dense", "scale", "relu"]


def test_batchnorm_on_1d_feature_map(tmp_path, rng) -> None:
    steps = [step("BatchNormalization", ACT, *bn_inputs(rng, 3))]
    check_import(chain([1, 3, 7], steps), tmp_path, batched=True)


@pytest.mark.parametrize(
    "steps",
    [
        [step("Sub", ACT, np.float32(0.3)), step("Div", ACT, np.float32(0.7))],
        [step("Sub", ACT, "mean"), step("Div", ACT, "std")],
        [step("Sub", "mean", ACT), step("Mul", "std", ACT)],
        [step("Add", "mean", ACT), step("Mul", ACT, "std"), step("Neg")],
        [step("Neg"), step("Sub", np.float32(1.0), ACT), step("Add", ACT, "mean4")],
    ],
    ids=["scalars", "sub-div", "const-sub", "add-mul-neg", "neg-rsub-add"],
)
def test_input_normalization(tmp_path, rng, steps) -> None:
    consts = {
        "mean": f32(rng, 1, 3, 1, 1),
        "std": pos(rng, 3, 1, 1),
        "mean4": f32(rng, 4, 5),
    }
    steps = [
        Step(s.op, tuple(consts.get(i, i) if isinstance(i, str) else i for i in s.inputs), s.attrs)
        for s in steps
    ]
    conv = step("Conv", ACT, f32(rng, 2, 3, 3, 3), f32(rng, 2))
    net = check_import(chain([1, 3, 4, 5], [*steps, conv]), tmp_path, batched=True)
    assert kinds(net) == ["scale"] * len(steps) + ["conv"]


def test_normalization_matches_formula(tmp_path, rng) -> None:
    """``(c - x) / s`` becomes one Scale per node with the right coefficients."""
    c, s = f32(rng, 1, 4), pos(rng, 4)
    net = check_import(chain([1, 4], [step("Sub", c, ACT), step("Div", ACT, s)]), tmp_path)
    sub, div = net.layers
    np.testing.assert_allclose(sub.mul, -1)
    np.testing.assert_allclose(sub.add, c.reshape(4))
    np.testing.assert_allclose(div.mul, 1 / s, rtol=1e-6)
    np.testing.assert_array_equal(div.add, 0)


# -- layout ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("axis", "sample", "batched"),
    [(1, (60,), True), (0, (60,), True), (2, (3, 20), False), (-1, (12, 5), False)],
)
def test_flatten(tmp_path, axis, sample, batched) -> None:
    model = chain([1, 3, 4, 5], [step("Flatten", axis=axis), step("Relu")])
    net = check_import(model, tmp_path, batched=batched)
    assert net.output.sample_shape == sample


@pytest.mark.parametrize(
    ("target", "sample"),
    [((0, -1), (24,)), ((0, 3, -1), (3, 8)), ((1, 0, 12, 1), (2, 12, 1)), ((-1,), None)],
    ids=str,
)
def test_reshape(tmp_path, rng, target, sample) -> None:
    steps = [step("Reshape", ACT, i64(*target)), step("Relu")]
    net = check_import(chain([1, 2, 3, 4], steps), tmp_path, batched=sample is not None)
    if sample is not None:
        assert net.output.sample_shape == sample
    else:
        assert net.output.shape == (24,) and not net.output.has_batch


def test_reshape_then_gemm_then_reshape_back(tmp_path, rng) -> None:
    steps = [
        step("Reshape", ACT, i64(1, -1)),
        step("Gemm", ACT, f32(rng, 12, 12), None, transB=1),
        step("Reshape", ACT, i64(0, 3, 2, 2)),
        step("Conv", ACT, f32(rng, 2, 3, 2, 2), None),
    ]
    net = check_import(chain([1, 3, 2, 2], steps), tmp_path, batched=True)
    assert kinds(net) == ["reshape", "dense", "reshape", "conv"]


SQUEEZE_STEPS = {
    "unsqueeze-squeeze": ([1, 6], [2], [2], (6,)),
    "negative-axes": ([1, 6], [-1, 1], [1, -1], (6,)),
    "squeeze-then-unsqueeze": ([1, 1, 6], [1], [1], (1, 6)),
}


def squeeze_model(opset: int, in_shape, unsq, sq, *, first: str) -> onnx.ModelProto:
    def node(op: str, axes: list[int]) -> Step:
        if opset >= 13:
            return step(op, ACT, i64(*axes))
        return step(op, axes=axes)

    ops = [node("Unsqueeze", unsq), node("Squeeze", sq)]
    if first == "Squeeze":
        ops.reverse()
    return chain(in_shape, [*ops, step("Relu")], opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("case", list(SQUEEZE_STEPS))
def test_squeeze_unsqueeze(tmp_path, opset, case) -> None:
    in_shape, unsq, sq, sample = SQUEEZE_STEPS[case]
    first = "Squeeze" if case.startswith("squeeze") else "Unsqueeze"
    model = squeeze_model(opset, in_shape, unsq, sq, first=first)
    net = check_import(model, tmp_path, batched=True)
    assert net.output.sample_shape == sample


def test_squeeze_all_size_one_axes_drops_batch(tmp_path) -> None:
    net = check_import(chain([1, 1, 5], [step("Squeeze"), step("Relu")]), tmp_path, batched=False)
    assert net.output.shape == (5,)


@pytest.mark.parametrize("case", list(SQUEEZE_STEPS))
def test_squeeze_unsqueeze_attribute_form_without_conversion(tmp_path, case) -> None:
    """The converters read ``axes`` attributes too (when a model stays at opset 11)."""
    in_shape, unsq, sq, sample = SQUEEZE_STEPS[case]
    first = "Squeeze" if case.startswith("squeeze") else "Unsqueeze"
    model = squeeze_model(11, in_shape, unsq, sq, first=first)
    loaded, _ = load_and_import(model, tmp_path / "m.onnx")
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    unconverted = dataclasses.replace(loaded, model=inferred)
    net = import_network(unconverted)
    assert net.output.sample_shape == sample
    x = np.random.default_rng(0).normal(size=(3, *net.input.sample_shape))
    np.testing.assert_allclose(
        net.forward(x).reshape(3, -1), np.maximum(x, 0).reshape(3, -1), rtol=0
    )


def test_transpose_nhwc_input_before_conv(tmp_path, rng) -> None:
    steps = [
        step("Transpose", perm=[0, 3, 1, 2]),
        step("Conv", ACT, f32(rng, 4, 3, 3, 3), f32(rng, 4), pads=[1, 1, 1, 1]),
        step("Relu"),
    ]
    net = check_import(chain([1, 5, 6, 3], steps), tmp_path, batched=True)
    assert kinds(net) == ["transpose", "conv", "relu"]
    assert net.layers[0].perm == (2, 0, 1)


def test_transpose_before_flatten_gemm(tmp_path, rng) -> None:
    steps = [
        step("Conv", ACT, f32(rng, 3, 2, 2, 2), None),
        step("Transpose", perm=[0, 2, 3, 1]),
        step("Flatten"),
        step("Gemm", ACT, f32(rng, 4, 36), f32(rng, 4), transB=1),
    ]
    net = check_import(chain([1, 2, 4, 5], steps), tmp_path, batched=True)
    assert kinds(net) == ["conv", "transpose", "reshape", "dense"]


def test_transpose_identity_perm_emits_nothing(tmp_path) -> None:
    model = chain([1, 2, 3], [step("Transpose", perm=[0, 1, 2]), step("Relu")])
    net = check_import(model, tmp_path, batched=True)
    assert kinds(net) == ["relu"]


@pytest.mark.parametrize("perm", [None, [1, 0, 2], [2, 0, 1]], ids=str)
def test_transpose_moving_the_batch_axis(tmp_path, perm) -> None:
    attrs = {} if perm is None else {"perm": perm}
    net = check_import(chain([1, 2, 3], [step("Transpose", **attrs)]), tmp_path, batched=False)
    assert isinstance(net.layers[-1], Transpose)


def test_identity_dropout_cast_are_dropped(tmp_path, rng) -> None:
    steps = [
        step("Identity"),
        step("Dropout", ACT, np.array(0.5, np.float32), np.array(False)),
        step("Cast", to=TensorProto.FLOAT),
        step("Gemm", ACT, f32(rng, 3, 4), f32(rng, 3), transB=1),
        step("Dropout"),
        step("Relu"),
        step("Identity"),
    ]
    net = check_import(chain([1, 4], steps), tmp_path, batched=True)
    assert kinds(net) == ["dense", "relu"]


def test_network_of_only_identity(tmp_path) -> None:
    net = check_import(chain(["N", 4], [step("Identity")]), tmp_path, batched=True)
    assert net.layers == ()


# -- constant folding and the batch axis -------------------------------------
def view_batch_minus_one_model(rng: np.random.Generator, shape_of: str) -> onnx.ModelProto:
    """``x.view(x.size(0), -1)`` the way torch.onnx exports it, after a conv."""
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Shape", [shape_of], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"], name="view"),
        helper.make_node("Gemm", ["flat", "W2", "B2"], ["y"], name="fc", transB=1),
    ]
    weights = {
        "W": f32(rng, 2, 3, 3, 3),
        "B": f32(rng, 2),
        "zero": np.array(0, np.int64),
        "axes0": i64(0),
        "minus1": i64(-1),
        "W2": f32(rng, 5, 2 * 4 * 4),
        "B2": f32(rng, 5),
    }
    return make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", ["N", 5])], weights)


@pytest.mark.parametrize("shape_of", ["r", "x"])
def test_constant_shape_subgraph_is_folded(tmp_path, rng, shape_of) -> None:
    model = view_batch_minus_one_model(rng, shape_of)
    net = check_import(model, tmp_path, batched=True)
    assert kinds(net) == ["conv", "relu", "reshape", "dense"]
    assert net.layers[2].shape == (32,)
    assert net.input.batch_dim == "N"


def test_constant_weight_subgraph_is_folded(tmp_path, rng) -> None:
    """Weights computed from constants (Transpose of an initializer) fold before the Gemm."""
    w = f32(rng, 4, 3)
    nodes = [
        helper.make_node("Transpose", ["Wt"], ["W"], name="wT", perm=[1, 0]),
        helper.make_node("Mul", ["W", "two"], ["W2"], name="w2"),
        helper.make_node("Gemm", ["x", "W2"], ["y"], name="fc", transB=1),
    ]
    weights = {"Wt": w.T.copy(), "two": np.float32(2.0)}
    model = make_model(nodes, [("x", [1, 3])], [("y", [1, 4])], weights)
    net = check_import(model, tmp_path, batched=True)
    (dense,) = net.layers
    np.testing.assert_allclose(dense.weight, 2 * w, rtol=1e-6)


def test_symbolic_batch_axis(tmp_path, rng) -> None:
    steps = [
        step("Gemm", ACT, f32(rng, 8, 5), f32(rng, 8), transB=1),
        step("Relu"),
        step("Gemm", ACT, f32(rng, 3, 8), f32(rng, 3), transB=1),
    ]
    net = check_import(chain(["batch", 5], steps), tmp_path, batched=True)
    assert net.input.batch_dim == "batch" and net.input.shape == (1, 5)
    exported = to_onnx(net)
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 5


# -- old opsets ------------------------------------------------------------
def test_opset_8_mlp_with_flatten_and_dropout(tmp_path, rng) -> None:
    steps = [
        step("Sub", ACT, f32(rng, 1, 1, 1, 5)),
        step("Flatten"),
        step("Gemm", ACT, f32(rng, 7, 5), f32(rng, 7), transB=1),
        step("Relu"),
        step("Dropout", ratio=0.3),
        step("MatMul", ACT, f32(rng, 7, 3)),
        step("Add", ACT, f32(rng, 3)),
    ]
    model = chain([1, 1, 1, 5], steps, opset=8)
    net = check_import(model, tmp_path, batched=True)
    loaded, _ = load_and_import(model, tmp_path / "again.onnx")
    assert loaded.original_opset == 8
    assert "converted opset 8 -> 17" in loaded.notes
    assert kinds(net) == ["scale", "reshape", "dense", "relu", "dense", "scale"]


def test_opset_9_cnn_with_batchnorm_and_maxpool(tmp_path, rng) -> None:
    steps = [
        step("Conv", ACT, f32(rng, 4, 1, 3, 3), f32(rng, 4), pads=[1, 1, 1, 1]),
        step("BatchNormalization", ACT, *bn_inputs(rng, 4)),
        step("Relu"),
        step("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        step("Flatten"),
        step("Gemm", ACT, f32(rng, 3, 16), f32(rng, 3), transB=1),
    ]
    model = chain([1, 1, 4, 4], steps, opset=9)
    net = check_import(model, tmp_path, batched=True)
    loaded, _ = load_and_import(model, tmp_path / "again.onnx")
    assert loaded.original_opset == 9 and "converted opset 9 -> 17" in loaded.notes
    assert kinds(net) == ["conv", "scale", "relu", "maxpool", "reshape", "dense"]


def test_opset_11_reshape_and_squeeze(tmp_path, rng) -> None:
    steps = [
        step("Reshape", ACT, i64(1, 2, 6)),
        step("Unsqueeze", axes=[3]),
        step("Conv", ACT, f32(rng, 3, 2, 2, 1), f32(rng, 3)),
        step("Squeeze", axes=[3]),
        step("Relu"),
    ]
    model = chain([1, 12], steps, opset=11)
    net = check_import(model, tmp_path, batched=True)
    assert net.output.sample_shape == (3, 5)


# -- property test ---------------------------------------------------------
@st.composite
def mlp_or_cnn(draw: st.DrawFn) -> onnx.ModelProto:
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    steps: list[Step] = []
    if draw(st.booleans()):  # CNN front
        event("cnn")
        channels = draw(st.integers(1, 3))
        size = draw(st.integers(5, 9))
        in_shape: list[int | str] = [draw(st.sampled_from([1, "N"])), channels, size, size]
        for _ in range(draw(st.integers(1, 2))):
            cout = draw(st.integers(1, 4))
            k = draw(st.integers(1, min(3, size)))
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, k - 1))
            steps += [
                step(
                    "Conv",
                    ACT,
                    f32(rng, cout, channels, k, k, scale=(channels * k * k) ** -0.5),
                    f32(rng, cout, scale=0.1),
                    strides=[stride] * 2,
                    pads=[pad] * 4,
                ),
                step("Relu"),
            ]
            size = (size + 2 * pad - k) // stride + 1
            channels = cout
        if size >= 2 and draw(st.booleans()):
            steps.append(
                step("MaxPool", kernel_shape=[2, 2], strides=[draw(st.integers(1, 2))] * 2)
            )
            size = (size - 2) // steps[-1].attrs["strides"][0] + 1
        steps.append(step("Flatten"))
        width = channels * size * size
    else:
        width = draw(st.integers(1, 10))
        in_shape = [draw(st.sampled_from([1, "N"])), width]
    for _ in range(draw(st.integers(1, 3))):
        n_out = draw(st.integers(1, 10))
        if draw(st.booleans()):
            w, b = f32(rng, n_out, width, scale=width**-0.5), f32(rng, n_out, scale=0.1)
            steps.append(step("Gemm", ACT, w, b, transB=1))
        else:
            steps += [
                step("MatMul", ACT, f32(rng, width, n_out, scale=width**-0.5)),
                step("Add", ACT, f32(rng, n_out, scale=0.1)),
            ]
        steps.append(step("Relu"))
        width = n_out
    return chain(in_shape, steps)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=mlp_or_cnn())
def test_random_networks_match_onnxruntime(model) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        net = check_import(model, Path(tmp), rows=3, batched=True)
    relus = sum(isinstance(layer, Relu) for layer in net.layers)
    assert relus == sum(node.op_type == "Relu" for node in model.graph.node)


# -- refusals --------------------------------------------------------------
def refusal(model: onnx.ModelProto, tmp_path: Path) -> UnsupportedModel:
    with pytest.raises(UnsupportedModel) as info:
        load_and_import(model, tmp_path / "bad.onnx")
    return info.value


def assert_names(err: UnsupportedModel, *nodes: tuple[str, str]) -> None:
    for name, op in nodes:
        assert (name, op) in err.nodes, err.nodes
        assert repr(name) in str(err)


def test_refuses_division_by_the_activation(tmp_path) -> None:
    model = chain([1, 3], [step("Div", np.float32(1.0), ACT, name="reciprocal")])
    err = refusal(model, tmp_path)
    assert_names(err, ("reciprocal", "Div"))
    assert "dividing by the activation" in str(err)


def test_refuses_division_by_zero(tmp_path) -> None:
    model = chain([1, 3], [step("Div", ACT, np.array([1, 0, 2], np.float32), name="d0")])
    assert_names(refusal(model, tmp_path), ("d0", "Div"))


def test_refuses_gemm_trans_a(tmp_path, rng) -> None:
    model = chain([1, 4], [step("Gemm", ACT, f32(rng, 1, 3), name="gemmT", transA=1)])
    err = refusal(model, tmp_path)
    assert_names(err, ("gemmT", "Gemm"))


def test_refuses_gemm_with_activation_as_b(tmp_path, rng) -> None:
    model = chain([1, 4], [step("Gemm", f32(rng, 2, 1), ACT, name="gemmB")])
    assert_names(refusal(model, tmp_path), ("gemmB", "Gemm"))


def test_refuses_ceil_mode_that_changes_the_shape(tmp_path) -> None:
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}
    model = chain([1, 1, 5, 5], [step("MaxPool", name="pool_ceil", **attrs)])
    err = refusal(model, tmp_path)
    assert_names(err, ("pool_ceil", "MaxPool"))
    assert "ceil_mode" in str(err)


def test_refuses_batchnorm_in_training_mode(tmp_path, rng) -> None:
    model = chain(
        [1, 3, 2, 2],
        [
            Step(
                "BatchNormalization", (ACT, *bn_inputs(rng, 3)), {"training_mode": 1}, "bn_train", 3
            )
        ],
    )
    err = refusal(model, tmp_path)
    assert_names(err, ("bn_train", "BatchNormalization"))
    assert "training_mode" in str(err)


def test_refuses_dropout_in_training_mode(tmp_path) -> None:
    model = chain(
        [1, 3], [step("Dropout", ACT, np.array(0.5, np.float32), np.array(True), name="drop")]
    )
    assert_names(refusal(model, tmp_path), ("drop", "Dropout"))


def test_refuses_cast_to_double(tmp_path) -> None:
    steps = [
        step("Cast", name="to_double", to=TensorProto.DOUBLE),
        step("Cast", to=TensorProto.FLOAT),
    ]
    assert_names(refusal(chain([1, 3], steps), tmp_path), ("to_double", "Cast"))


def test_refuses_average_pool_padding_without_count_include_pad(tmp_path) -> None:
    steps = [step("AveragePool", name="avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    assert_names(refusal(chain([1, 1, 4, 4], steps), tmp_path), ("avg", "AveragePool"))


def test_refuses_residual_branch(tmp_path, rng) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["y"], name="residual"),
    ]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], {"W": f32(rng, 4, 4)})
    err = refusal(model, tmp_path)
    assert_names(err, ("residual", "Add"))
    assert "single-path" in str(err)


def test_refuses_sigmoid_and_lstm_naming_both(tmp_path, rng) -> None:
    hidden = 3
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["seq"], name="lstm", hidden_size=hidden),
        helper.make_node("Reshape", ["seq", "shape"], ["h"], name="reshape"),
        helper.make_node("Sigmoid", ["h"], ["y"], name="gate"),
    ]
    weights = {
        "W": f32(rng, 1, 4 * hidden, 4),
        "R": f32(rng, 1, 4 * hidden, hidden),
        "shape": i64(1, hidden),
    }
    model = make_model(nodes, [("x", [1, 1, 4])], [("y", [1, hidden])], weights)
    err = refusal(model, tmp_path)
    assert sorted(err.nodes) == [("gate", "Sigmoid"), ("lstm", "LSTM")]
    assert "'gate' (Sigmoid)" in str(err) and "'lstm' (LSTM)" in str(err)


def test_refuses_maxpool_whose_indices_are_used(tmp_path) -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Cast", ["idx"], ["fidx"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["p", "fidx"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("y", [1, 1, 3, 3])])
    err = refusal(model, tmp_path)
    assert_names(err, ("pool", "MaxPool"))
    assert "idx" in str(err)


def test_maxpool_with_unused_indices_is_fine(tmp_path) -> None:
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2])]
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("y", [1, 1, 3, 3])])
    net = check_import(model, tmp_path, batched=True)
    assert kinds(net) == ["maxpool"]


def test_refuses_fixed_batch_of_four(tmp_path) -> None:
    model = chain([4, 3], [step("Relu")])
    err = refusal(model, tmp_path)
    assert "fixed batch of 4" in str(err) and "'x'" in str(err)


def test_every_converter_is_exercised() -> None:
    """Keep this file in step with the registry: a new op needs a test here."""
    tested = {
        "Add", "Sub", "Mul", "Div", "Neg", "BatchNormalization", "Relu", "Identity",
        "Dropout", "Cast", "Gemm", "MatMul", "Conv", "MaxPool", "AveragePool",
        "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
    }  # fmt: skip
    own = {"MaxTree", "SkipDense"}  # relugate's own subgraphs: test_max_prune, test_linear_skip
    assert set(CONVERTERS) == tested | own


def test_layers_are_canonical_types(tmp_path, rng) -> None:
    steps = [
        step("Conv", ACT, f32(rng, 2, 1, 3, 3), None),
        step("MaxPool", kernel_shape=[2, 2]),
        step("Transpose", perm=[0, 1, 3, 2]),
        step("Flatten"),
        step("Mul", ACT, np.float32(2.0)),
        step("Gemm", ACT, f32(rng, 2, 12), None, transB=1),
    ]
    net = check_import(chain([1, 1, 5, 6], steps), tmp_path, batched=True)
    types = [type(layer) for layer in net.layers]
    assert types == [Conv, MaxPool, Transpose, Reshape, Scale, Dense]


# -- additional shapes -----------------------------------------------------
def test_matmul_on_three_axis_activation(tmp_path, rng) -> None:
    steps = [step("MatMul", ACT, f32(rng, 4, 3)), step("Relu")]
    net = check_import(chain([1, 1, 4], steps), tmp_path, batched=True)
    assert kinds(net) == ["reshape", "dense", "reshape", "relu"]
    assert net.output.sample_shape == (1, 3)


def test_average_pool_same_upper_counting_pads(tmp_path) -> None:
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}
    steps = [step("AveragePool", count_include_pad=1, **attrs)]
    check_import(chain([1, 2, 8, 7], steps), tmp_path, batched=True)


@pytest.mark.parametrize(
    "steps",
    [
        [step("Flatten", axis=2)],
        [step("Transpose", perm=[1, 0, 2, 3])],
        [step("Squeeze", ACT, i64(0, 1))],
    ],
    ids=["flatten2", "transpose", "squeeze"],
)
def test_symbolic_batch_lost_inside_the_network(tmp_path, steps) -> None:
    """A network that stops being batch-separable still exports (with batch 1)."""
    in_shape = ["N", 1, 4, 5] if steps[0].op == "Squeeze" else ["N", 3, 4, 5]
    net = check_import(chain(in_shape, [*steps, step("Relu")]), tmp_path, batched=False)
    assert net.input.batch_dim == "N"
    dims = to_onnx(net).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == list(net.input.shape)


@pytest.mark.parametrize("in_shape", [[1, 3, 4, 5], [1, 4, 2, 2]], ids=["3x20", "4x4"])
def test_batchnorm_after_the_batch_axis_is_gone(tmp_path, rng, in_shape) -> None:
    """BatchNormalization's channel axis is axis 1 of the tensor, batch axis or not."""
    channels = in_shape[2] * in_shape[3]
    steps = [step("Flatten", axis=2), step("BatchNormalization", ACT, *bn_inputs(rng, channels))]
    net = check_import(chain(in_shape, steps), tmp_path, batched=False)
    assert kinds(net) == ["reshape", "scale"]


def test_refuses_global_average_pool_without_batch_axis(tmp_path) -> None:
    steps = [step("Reshape", ACT, i64(2, 3, 4)), step("GlobalAveragePool", name="gap")]
    assert_names(refusal(chain([1, 24], steps), tmp_path), ("gap", "GlobalAveragePool"))


def test_constant_nodes_feed_weights_and_shapes(tmp_path, rng) -> None:
    """torch.onnx often emits ``Constant`` nodes instead of initializers."""
    w = f32(rng, 4, 6)
    nodes = [
        helper.make_node("Constant", [], ["target"], name="c_shape", value_ints=[1, -1]),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="view"),
        helper.make_node(
            "Constant", [], ["W"], name="c_weight", value=onnx.numpy_helper.from_array(w)
        ),
        helper.make_node("Gemm", ["flat", "W"], ["y"], name="fc", transB=1),
    ]
    model = make_model(nodes, [("x", [1, 2, 3])], [("y", [1, 4])])
    net = check_import(model, tmp_path, batched=True)
    assert kinds(net) == ["reshape", "dense"]
    np.testing.assert_array_equal(net.layers[1].weight, w)
