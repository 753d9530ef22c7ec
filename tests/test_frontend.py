"""Negative tests for ``relugate.compiler.frontend.load_model``: every bad file must
raise ``ModelError`` or ``UnsupportedModel`` whose message names the problem."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import unsupported_model
from conftest import make_model, mlp_model, save_model
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from relugate.compiler.errors import ModelError, RelugateError, UnsupportedModel
from relugate.compiler.frontend import TARGET_OPSET, load_model, onnx_opset
from relugate.compiler.importer import import_network
from relugate.compiler.inspect import inspect_model


def conv_model() -> onnx.ModelProto:
    """Symbolic batch, a Constant node (attribute tensor), Conv, Relu, Flatten, Gemm."""
    rng = np.random.default_rng(0)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 32])
    nodes = [
        helper.make_node("Conv", ["x", "Wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Constant", [], ["flat_shape"], name="const", value=shape),
        helper.make_node("Reshape", ["r", "flat_shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W", "b"], ["y"], name="fc", transB=1),
    ]
    weights = {
        "Wc": rng.normal(size=(2, 3, 3, 3)).astype(np.float32),
        "bc": np.zeros(2, np.float32),
        "W": rng.normal(size=(2, 32)).astype(np.float32),
        "b": np.zeros(2, np.float32),
    }
    return make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 2])], weights)


def expect(error: type[RelugateError], path: Path, *needles: str) -> RelugateError:
    """``load_model(path)`` raises ``error`` naming the file and every needle."""
    with pytest.raises(error) as info:
        load_model(path)
    message = str(info.value)
    assert path.name in message, message
    for needle in needles:
        assert needle in message, message
    return info.value


# --- unreadable files -----------------------------------------------------------


def test_a_good_model_loads(tmp_path: Path) -> None:
    path = save_model(conv_model(), tmp_path / "conv.onnx")
    loaded = load_model(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.original_opset == TARGET_OPSET and loaded.notes == ()
    assert import_network(loaded).stats()["relus"] == 32
    assert load_model(str(path)).sha256 == loaded.sha256  # a str path works too


@pytest.mark.parametrize("build", [conv_model, unsupported_model])
def test_every_truncation_is_a_model_error(
    tmp_path: Path, build: Callable[[], onnx.ModelProto]
) -> None:
    data = build().SerializeToString()
    path = tmp_path / "cut.onnx"
    escaped = {}
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        try:
            inspect_model(path)  # load_model, then the importer
        except (ModelError, UnsupportedModel) as exc:
            assert "cut.onnx" in str(exc), (cut, str(exc))
        except Exception as exc:
            escaped[cut] = repr(exc)
        else:
            escaped[cut] = "loaded"
    assert not escaped, escaped


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    for seed in range(40):
        rng = np.random.default_rng(seed)
        path.write_bytes(rng.bytes(int(rng.integers(1, 3000))))
        with pytest.raises(ModelError, match=r"noise\.onnx: not a readable ONNX file"):
            load_model(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    expect(ModelError, path, "not a readable ONNX file")


def test_missing_file(tmp_path: Path) -> None:
    expect(ModelError, tmp_path / "absent.onnx", "no such file")


def test_a_folder_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "folder.onnx").mkdir()
    expect(ModelError, tmp_path / "folder.onnx")


def test_protobuf_without_graph(tmp_path: Path) -> None:
    model = onnx.ModelProto(ir_version=8, producer_name="nothing")
    model.opset_import.add(version=17)
    path = tmp_path / "nograph.onnx"
    path.write_bytes(model.SerializeToString())
    expect(ModelError, path, "no graph")


def test_graph_without_nodes(tmp_path: Path) -> None:
    model = make_model([], [("x", [1, 3])], [("x", [1, 3])])
    path = tmp_path / "nonodes.onnx"
    path.write_bytes(model.SerializeToString())
    expect(ModelError, path, "no nodes")


def test_checker_rejects_a_dangling_input(tmp_path: Path) -> None:
    node = helper.make_node("Add", ["x", "ghost"], ["y"], name="add")
    path = save_model(make_model([node], [("x", [1, 3])], [("y", [1, 3])]), tmp_path / "m.onnx")
    expect(ModelError, path, "checker", "ghost")


def test_op_type_that_is_not_utf8(tmp_path: Path) -> None:
    # the checker's message quotes the op type; decoding it used to escape as UnicodeDecodeError
    data = mlp_model([3, 4, 2]).SerializeToString()
    assert data.count(b"Relu") == 1
    path = tmp_path / "badtext.onnx"
    path.write_bytes(data.replace(b"Relu", b"Re\xffu"))
    expect(ModelError, path, "checker", "No Op registered for Re")


# --- unsupported models -----------------------------------------------------------


def test_unsupported_ops_are_listed_together(tmp_path: Path) -> None:
    path = save_model(unsupported_model(), tmp_path / "unsup.onnx")
    loaded = load_model(path)  # valid ONNX: the importer refuses it
    with pytest.raises(UnsupportedModel) as info:
        import_network(loaded)
    assert info.value.nodes == [("sig", "Sigmoid"), ("lstm", "LSTM")]
    message = str(info.value)
    for text in ("'sig' (Sigmoid)", "'lstm' (LSTM)", "2 node(s)"):
        assert text in message, message
    assert "Gemm" not in message.split("\n", 1)[1]  # supported nodes are not listed
    info_dict = inspect_model(path)
    assert info_dict["supported"] is False
    assert info_dict["unsupported_nodes"] == [["sig", "Sigmoid"], ["lstm", "LSTM"]]


def test_unnamed_unsupported_node_is_still_identified(tmp_path: Path) -> None:
    model = mlp_model([3, 4, 2])
    model.graph.node.append(helper.make_node("Sigmoid", ["y"], ["z"]))
    model.graph.output[0].name = "z"
    path = save_model(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModel) as info:
        import_network(load_model(path))
    ((name, op),) = info.value.nodes
    assert op == "Sigmoid" and name and name in str(info.value)


def test_symbolic_non_batch_dimension(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    path = save_model(
        make_model([node], [("x", ["N", "K"])], [("y", ["N", "K"])]), tmp_path / "s.onnx"
    )
    expect(UnsupportedModel, path, "'x'", "axis 1", "symbolic")


def test_symbolic_rank1_input(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    path = save_model(make_model([node], [("x", ["K"])], [("y", ["K"])]), tmp_path / "s.onnx")
    expect(UnsupportedModel, path, "'x'", "axis 0")


def test_symbolic_batch_is_pinned(tmp_path: Path) -> None:
    model = mlp_model([3, 4, 2])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    loaded = load_model(save_model(model, tmp_path / "m.onnx"))
    assert loaded.batch_dim == "batch"
    dims = loaded.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3]


def test_two_inputs(tmp_path: Path) -> None:
    node = helper.make_node("Add", ["x", "x2"], ["y"], name="add")
    model = make_model([node], [("x", [1, 3]), ("x2", [1, 3])], [("y", [1, 3])])
    expect(UnsupportedModel, save_model(model, tmp_path / "two.onnx"), "2 input(s)", "'x2'")


def test_two_outputs(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="r"),
        helper.make_node("Neg", ["x"], ["z"]),
    ]
    model = make_model(nodes, [("x", [1, 3])], [("y", [1, 3]), ("z", [1, 3])])
    expect(UnsupportedModel, save_model(model, tmp_path / "m.onnx"), "2 output(s)", "'z'")


def test_int64_input(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.FLOAT)],
        "int",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    expect(UnsupportedModel, save_model(model, tmp_path / "int.onnx"), "'x'", "INT64", "FLOAT")


def test_input_of_unknown_element_type(tmp_path: Path) -> None:
    # the checker lets an out-of-range elem_type through; naming it used to raise ValueError
    model = mlp_model([3, 4, 2])
    model.graph.input[0].type.tensor_type.elem_type = 50
    expect(UnsupportedModel, save_model(model, tmp_path / "m.onnx"), "'x'", "50")


# --- shapes and opsets ------------------------------------------------------------


def test_input_rank_does_not_fit_conv(tmp_path: Path) -> None:
    weights = {"Wc": np.ones((2, 3, 3, 3), np.float32)}
    node = helper.make_node("Conv", ["x", "Wc"], ["y"], name="conv")
    model = make_model([node], [("x", [1, 3, 8])], [("y", [1, 2, 6])], weights)
    expect(ModelError, save_model(model, tmp_path / "rank.onnx"), "shapes", "conv")


def test_declared_output_shape_contradicts_inference(tmp_path: Path) -> None:
    model = mlp_model([3, 4, 2])
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
    expect(ModelError, save_model(model, tmp_path / "m.onnx"), "shapes", "gemm1")


def test_conv_channel_mismatch(tmp_path: Path) -> None:
    model = conv_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    path = save_model(model, tmp_path / "chan.onnx")
    with pytest.raises((ModelError, UnsupportedModel), match="conv"):
        inspect_model(path)


def test_opset8_is_converted(tmp_path: Path) -> None:
    model = mlp_model([3, 4, 2])
    model.opset_import[0].version = 8
    model.ir_version = 4
    path = save_model(model, tmp_path / "old.onnx")
    loaded = load_model(path)
    assert loaded.original_opset == 8
    assert onnx_opset(loaded.model) == TARGET_OPSET
    assert loaded.notes == (f"converted opset 8 -> {TARGET_OPSET}",)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    net = import_network(loaded)
    reference = import_network(load_model(save_model(mlp_model([3, 4, 2]), tmp_path / "new.onnx")))
    np.testing.assert_allclose(net.forward(x, np.float32), reference.forward(x, np.float32))


# --- external data ----------------------------------------------------------------


def save_external(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def relocate(path: Path, location: str, name: str = "moved.onnx") -> Path:
    """A copy of the model at ``path`` whose external data all point at ``location``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    out = path.with_name(name)
    out.write_bytes(model.SerializeToString())
    return out


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Paths opened for external data (through onnx) or by Python code during the test."""
    seen: list[str] = []
    real = external_data_helper._open_external_data_fd

    def spy(base_dir: str, location: str, name: str, read_only: bool) -> int:
        seen.append(os.path.join(base_dir, location))
        return real(base_dir, location, name, read_only)

    monkeypatch.setattr(external_data_helper, "_open_external_data_fd", spy)
    _AUDIT["log"] = seen
    yield seen
    _AUDIT["log"] = None


_AUDIT: dict[str, list[str] | None] = {"log": None}


def _audit(event: str, args: tuple[object, ...]) -> None:
    log = _AUDIT["log"]
    if log is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        log.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def test_external_data_inside_the_folder_loads(tmp_path: Path, opened: list[str]) -> None:
    path = save_external(mlp_model([3, 4, 2]), tmp_path / "model")
    assert (tmp_path / "model" / "weights.bin").is_file()
    loaded = load_model(path)
    assert any(p.endswith("weights.bin") for p in opened)
    weights = {t.name: numpy_helper.to_array(t) for t in loaded.model.graph.initializer}
    for init in mlp_model([3, 4, 2]).graph.initializer:
        np.testing.assert_array_equal(weights[init.name], numpy_helper.to_array(init))


def test_external_data_with_relative_model_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_external(mlp_model([3, 4, 2]), tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert import_network(load_model(Path("model/m.onnx"))).stats()["relus"] == 4
    assert relocate(Path("model/m.onnx"), "sub/../weights.bin").is_file()
    load_model(Path("model/moved.onnx"))  # ".." that stays inside the folder is fine


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "parent-of-sub"])
def test_external_data_outside_the_folder_is_refused(
    tmp_path: Path, opened: list[str], where: str
) -> None:
    model = mlp_model([3, 4, 2])
    path = save_external(model, tmp_path / "model")
    secret = tmp_path / "secret.bin"
    # the same bytes as the real weights: if anything read it, the model would load
    secret.write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    location = {
        "parent": "../secret.bin",
        "absolute": str(secret),
        "symlink": "link.bin",
        "parent-of-sub": "sub/../../secret.bin",
    }[where]
    if where == "symlink":
        (tmp_path / "model" / "link.bin").symlink_to(secret)
    moved = relocate(path, location)
    opened.clear()
    error = expect(ModelError, moved, "outside the model's folder", repr(location), "'W0'")
    assert isinstance(error, ModelError)
    assert not [p for p in opened if "secret" in p or "link.bin" in p], opened


def test_external_data_outside_in_a_constant_node(tmp_path: Path, opened: list[str]) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    value = numpy_helper.from_array(np.ones((1, 3), np.float32), "c")
    (tmp_path / "secret.bin").write_bytes(value.raw_data)
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../secret.bin")
    nodes = [
        helper.make_node("Constant", [], ["c"], name="const", value=value),
        helper.make_node("Add", ["x", "c"], ["y"], name="add"),
    ]
    path = folder / "m.onnx"
    path.write_bytes(make_model(nodes, [("x", [1, 3])], [("y", [1, 3])]).SerializeToString())
    opened.clear()
    expect(ModelError, path, "outside the model's folder", "'c'")
    assert not [p for p in opened if "secret" in p], opened


def test_missing_external_data(tmp_path: Path) -> None:
    path = save_external(mlp_model([3, 4, 2]), tmp_path / "model")
    (tmp_path / "model" / "weights.bin").unlink()
    expect(ModelError, path, "'weights.bin'", "missing")


def test_external_data_shorter_than_declared(tmp_path: Path) -> None:
    path = save_external(mlp_model([3, 4, 2]), tmp_path / "model")
    weights = tmp_path / "model" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:10])
    expect(ModelError, path, "external data")
