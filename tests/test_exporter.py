"""Exporter tests: the ONNX a ``Network`` becomes, and importing it back.

Golden tests pin the op sequence and attributes emitted for canonical
networks; every exported model passes the full ONNX checker, keeps the
original input/output names and shapes, runs in onnxruntime like
``Network.forward``, and re-imports to the same layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_builders import ACT, assert_close, chain, load_and_import, run_symbolic_batch, step

from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.exporter import to_onnx
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale, Transpose
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import run_batch, session


def spec(name: str, shape: tuple[int, ...], batch_dim: int | str = 1) -> TensorSpec:
    has_batch = len(shape) >= 2 and shape[0] == 1
    return TensorSpec(name, shape, has_batch, batch_dim)


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    return numpy_helper.to_array(tensor)


def io_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def exported(net: Network, **kwargs: object) -> onnx.ModelProto:
    """``to_onnx`` checked by the full checker and against ``Network.forward``."""
    model = to_onnx(net, **kwargs)
    onnx.checker.check_model(model, full_check=True)
    batch = io_dims(model.graph.input[0])[0] if net.input.has_batch else 1
    rows = 4 if isinstance(batch, str) or batch == 1 else batch
    x = np.random.default_rng(0).normal(size=(rows, *net.input.sample_shape)).astype(np.float32)
    reference = net.forward(x, np.float32).reshape(rows, -1)
    if isinstance(batch, str):
        assert_close(reference, run_symbolic_batch(model, net, x), "exported model, batch N")
    elif batch == 1:
        assert_close(reference, run_batch(model, net.input, x), "exported model")
    else:  # a fixed batch: feed exactly that many rows
        (y,) = session(model).run(None, {net.input.name: x})
        assert y.shape == (batch, *net.output.sample_shape)
        assert_close(reference, y.reshape(rows, -1), f"exported model, batch {batch}")
    return model


def mlp(rng: np.random.Generator, batch_dim: int | str = 1) -> Network:
    layers = [
        Dense("fc1", weight=rng.normal(size=(6, 4)), bias=rng.normal(size=6)),
        Relu("relu1"),
        Dense("fc2", weight=rng.normal(size=(3, 6)), bias=rng.normal(size=3)),
    ]
    return Network(spec("obs", (1, 4), batch_dim), spec("logits", (1, 3), batch_dim), tuple(layers))


def cnn(rng: np.random.Generator) -> Network:
    layers = [
        Scale("norm", mul=rng.uniform(0.5, 2, (2, 1, 1)), add=rng.normal(size=(2, 1, 1))),
        Conv(
            "conv", weight=rng.normal(size=(4, 1, 3, 3)), bias=rng.normal(size=4),
            strides=(1, 2), pads=(1, 0, 1, 1), dilations=(1, 1), group=2,
        ),
        Relu("relu"),
        MaxPool("pool", kernel=(2, 2), strides=(2, 1), pads=(0, 0, 1, 0), dilations=(1, 1)),
        Transpose("to_hwc", perm=(1, 2, 0)),
        Reshape("flat", shape=(4 * 2 * 4,)),
        Dense("fc", weight=rng.normal(size=(5, 32)), bias=rng.normal(size=5)),
        Scale("temp", mul=np.full(5, 0.5), add=np.zeros(5)),
    ]  # fmt: skip
    return Network(spec("image", (1, 2, 7, 6)), spec("scores", (1, 5)), tuple(layers))


# -- golden op sequences -----------------------------------------------------
def test_mlp_becomes_gemm_trans_b() -> None:
    net = mlp(np.random.default_rng(0))
    model = exported(net)
    assert ops(model) == ["Gemm", "Relu", "Gemm"]
    gemm = model.graph.node[0]
    assert gemm.name == "fc1" and attrs(gemm) == {"transB": 1}
    np.testing.assert_array_equal(initializer(model, gemm.input[1]), net.layers[0].weight)
    np.testing.assert_array_equal(initializer(model, gemm.input[2]), net.layers[0].bias)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)
    assert model.graph.input[0].name == "obs" and io_dims(model.graph.input[0]) == [1, 4]
    assert model.graph.output[0].name == "logits" and io_dims(model.graph.output[0]) == [1, 3]
    assert model.opset_import[0].version == 17


def test_cnn_op_sequence_and_attributes() -> None:
    net = cnn(np.random.default_rng(1))
    model = exported(net)
    assert ops(model) == [
        "Mul",
        "Add",
        "Conv",
        "Relu",
        "MaxPool",
        "Transpose",
        "Flatten",
        "Gemm",
        "Mul",
    ]
    by_op = {node.op_type: node for node in model.graph.node}
    assert attrs(by_op["Conv"]) == {
        "kernel_shape": [3, 3], "strides": [1, 2], "pads": [1, 0, 1, 1],
        "dilations": [1, 1], "group": 2,
    }  # fmt: skip
    assert attrs(by_op["MaxPool"]) == {
        "kernel_shape": [2, 2], "strides": [2, 1], "pads": [0, 0, 1, 0], "dilations": [1, 1],
    }  # fmt: skip
    assert attrs(by_op["Transpose"]) == {"perm": [0, 2, 3, 1]}
    assert attrs(by_op["Flatten"]) == {"axis": 1}
    assert io_dims(model.graph.input[0]) == [1, 2, 7, 6]
    assert io_dims(model.graph.output[0]) == [1, 5]


@pytest.mark.parametrize(
    ("shape", "op", "target"),
    [
        ((12,), "Flatten", None),
        ((3, 4), "Reshape", [0, 3, 4]),
        ((2, 3, 2), "Reshape", [0, 2, 3, 2]),
    ],
)
def test_reshape_emits_flatten_for_vectors(shape, op, target) -> None:
    net = Network(spec("x", (1, 2, 6)), spec("y", (1, *shape)), (Reshape("r", shape=shape),))
    model = exported(net)
    assert ops(model) == [op]
    if target is not None:
        np.testing.assert_array_equal(initializer(model, model.graph.node[0].input[1]), target)


@pytest.mark.parametrize(
    ("mul", "add", "expected"),
    [
        (2.0, 1.0, ["Mul", "Add"]),
        (2.0, 0.0, ["Mul"]),
        (1.0, -1.0, ["Add"]),
        (1.0, 0.0, ["Identity"]),
    ],
)
def test_scale_emits_only_what_it_needs(mul, add, expected) -> None:
    layer = Scale("s", mul=np.full(3, mul), add=np.full(3, add))
    net = Network(spec("x", (1, 3)), spec("y", (1, 3)), (layer,))
    model = exported(net)
    assert ops(model) == expected
    assert model.graph.output[0].name == "y"


def test_network_without_batch_axis_gets_reshape_at_both_ends() -> None:
    rng = np.random.default_rng(2)
    layers = (
        Dense("W0", weight=rng.normal(size=(4, 3)), bias=rng.normal(size=4)),
        Relu("R0"),
        Dense("W1", weight=rng.normal(size=(2, 4)), bias=np.zeros(2)),
    )
    net = Network(spec("X_0", (3,)), spec("Y", (2,)), layers)
    model = exported(net)
    assert ops(model) == ["Reshape", "Gemm", "Relu", "Gemm", "Reshape"]
    first, last = model.graph.node[0], model.graph.node[-1]
    np.testing.assert_array_equal(initializer(model, first.input[1]), [1, 3])
    np.testing.assert_array_equal(initializer(model, last.input[1]), [2])
    assert io_dims(model.graph.input[0]) == [3] and io_dims(model.graph.output[0]) == [2]
    assert model.graph.input[0].name == "X_0" and last.output[0] == "Y"
    with pytest.raises(UnsupportedModel):
        to_onnx(net, batch="N")


def test_empty_network_is_an_identity() -> None:
    net = Network(spec("x", (1, 3)), spec("y", (1, 3)), ())
    model = exported(net)
    assert ops(model) == ["Identity"]
    assert [model.graph.input[0].name, model.graph.output[0].name] == ["x", "y"]


# -- batch axis ------------------------------------------------------------
@pytest.mark.parametrize(("batch", "dim"), [(None, 1), ("N", "N"), (5, 5), (1, 1)])
def test_batch_override(batch, dim) -> None:
    model = exported(mlp(np.random.default_rng(3)), batch=batch)
    assert io_dims(model.graph.input[0]) == [dim, 4]
    assert io_dims(model.graph.output[0]) == [dim, 3]


def test_batch_defaults_to_the_inputs_spelling() -> None:
    model = exported(mlp(np.random.default_rng(4), batch_dim="batch"))
    assert io_dims(model.graph.input[0]) == ["batch", 4]
    assert io_dims(model.graph.output[0]) == ["batch", 3]


def test_a_network_that_loses_its_batch_axis_exports_with_batch_one() -> None:
    layers = (Reshape("r", shape=(3, 4)), Relu("relu"))
    net = Network(spec("x", (1, 3, 4), "N"), TensorSpec("y", (3, 4), False, "N"), layers)
    model = exported(net)
    assert io_dims(model.graph.input[0]) == [1, 3, 4]
    assert io_dims(model.graph.output[0]) == [3, 4]
    with pytest.raises(UnsupportedModel):
        to_onnx(net, batch=2)


# -- round trip ------------------------------------------------------------
def as_exported(layers: tuple[Layer, ...]) -> list[Layer]:
    """The layers a re-import yields: a Scale comes back as its Mul and its Add, each named
    after the node the exporter emits (an identity Scale disappears)."""
    out: list[Layer] = []
    for layer in layers:
        if not isinstance(layer, Scale):
            out.append(layer)
            continue
        if not np.all(layer.mul == 1):
            out.append(Scale(f"{layer.name}/mul", mul=layer.mul, add=np.zeros(())))
        if np.any(layer.add != 0):
            out.append(Scale(f"{layer.name}/add", mul=np.ones(()), add=layer.add))
    return out


def same_layers(expected: list[Layer], got: tuple[Layer, ...]) -> None:
    assert [(type(a), a.name) for a in got] == [(type(a), a.name) for a in expected]
    for a, b in zip(expected, got, strict=True):
        for key, value in vars(a).items():
            other = getattr(b, key)
            if isinstance(value, np.ndarray):
                full = np.broadcast_shapes(value.shape, other.shape)
                np.testing.assert_allclose(
                    np.broadcast_to(other, full), np.broadcast_to(value, full), rtol=1e-6,
                    err_msg=f"{a.name}.{key}",
                )  # fmt: skip
            else:
                assert other == value, (a.name, key, other, value)


def reimport(net: Network, tmp_path: Path) -> Network:
    _, again = load_and_import(exported(net), tmp_path / "exported.onnx")
    assert again.input == net.input, (again.input, net.input)
    assert again.output.name == net.output.name and again.output.shape == net.output.shape
    x = np.random.default_rng(1).normal(size=(3, *net.input.sample_shape))
    np.testing.assert_allclose(again.forward(x), net.forward(x), rtol=1e-6, atol=1e-9)
    return again


@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp", "cnn"])
def test_round_trip_gives_the_same_layers(tmp_path, build) -> None:
    net = build(np.random.default_rng(5))
    same_layers(as_exported(net.layers), reimport(net, tmp_path).layers)


def test_round_trip_with_symbolic_batch(tmp_path) -> None:
    net = mlp(np.random.default_rng(6), batch_dim="N")
    again = reimport(net, tmp_path)
    assert again.input.batch_dim == "N"
    same_layers(list(net.layers), again.layers)


def test_round_trip_of_an_imported_model_twice(tmp_path) -> None:
    """ONNX -> Network -> ONNX -> Network -> ONNX -> Network keeps the layers each time."""
    rng = np.random.default_rng(8)
    steps = [
        step("Sub", ACT, rng.normal(size=(1, 3, 1, 1)).astype(np.float32)),
        step("Conv", ACT, rng.normal(size=(2, 3, 3, 3)).astype(np.float32), None),
        step(
            "BatchNormalization",
            ACT,
            *(rng.uniform(0.5, 1, 2).astype(np.float32) for _ in range(4)),
        ),
        step("Relu"),
        step("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
        step("Reshape", ACT, np.array([0, -1], np.int64)),
        step("MatMul", ACT, rng.normal(size=(8, 3)).astype(np.float32)),
    ]
    _, net = load_and_import(chain(["N", 3, 6, 6], steps), tmp_path / "original.onnx")
    once = reimport(net, tmp_path)
    same_layers(as_exported(net.layers), once.layers)
    twice = reimport(once, tmp_path)
    same_layers(as_exported(once.layers), twice.layers)


def test_round_trip_of_a_network_without_batch_axis(tmp_path) -> None:
    """Function and affine layers survive; the re-import adds Reshape layers around each Dense
    (the exported graph's leading 1 reads as a data axis, not a batch axis)."""
    rng = np.random.default_rng(7)
    layers = (
        Scale("shift", mul=np.ones(()), add=rng.normal(size=3)),
        Dense("W0", weight=rng.normal(size=(4, 3)), bias=rng.normal(size=4)),
        Relu("R0"),
        Dense("W1", weight=rng.normal(size=(2, 4)), bias=np.zeros(2)),
    )
    net = Network(spec("X_0", (3,)), spec("Y", (2,)), layers)
    again = reimport(net, tmp_path)
    assert not again.input.has_batch and not again.output.has_batch
    kept = [layer for layer in again.layers if not isinstance(layer, Reshape)]
    same_layers(as_exported(net.layers), tuple(kept))
