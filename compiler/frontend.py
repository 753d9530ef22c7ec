"""Load an ONNX file safely and bring it to one opset with static shapes.

Steps: read without external data, check that every external-data path stays
inside the model's folder, load it, run the ONNX checker, convert old opsets
to ``TARGET_OPSET``, pin a symbolic batch axis to 1 and infer shapes.  The
result is a ``LoadedModel`` the importer turns into a ``Network``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import external_data_helper, shape_inference, version_converter

from relugate.compiler.errors import ModelError, UnsupportedModel

TARGET_OPSET = 17


@dataclass(frozen=True)
class LoadedModel:
    model: onnx.ModelProto
    path: Path
    sha256: str
    original_opset: int
    batch_dim: int | str  # axis 0 of the input as the file spelled it ("N" when symbolic)
    notes: tuple[str, ...]


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path)
    data = _read_bytes(path)
    model = _parse(data, path)
    _load_external_data(model, path)
    _check(model, path)
    opset = onnx_opset(model)
    notes: list[str] = []
    model = _convert_opset(model, opset, notes)
    batch_dim = _pin_batch_axis(model, path)
    model = _infer_shapes(model, path)
    digest = hashlib.sha256(data).hexdigest()
    return LoadedModel(model, path, digest, opset, batch_dim, tuple(notes))


def onnx_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelError("model imports no version of the default ONNX opset")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from exc


def _parse(data: bytes, path: Path) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and, for some inputs, others
        raise ModelError(f"{path}: not a readable ONNX file (truncated or corrupt): {exc}") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"{path}: not a readable ONNX file (no graph or no nodes)")
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise ModelError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} "
                "outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise ModelError(f"{path}: external data {location!r} of {tensor.name!r} is missing")
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load external data: {exc}") from exc


def _check(model: onnx.ModelProto, path: Path) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: the ONNX checker rejects the model: {first}") from exc
    except UnicodeDecodeError as exc:  # the checker's message quotes a name that is not UTF-8
        first = bytes(exc.object).decode("utf-8", "replace").strip().splitlines()[0]
        raise ModelError(f"{path}: the ONNX checker rejects the model: {first}") from exc


def _convert_opset(model: onnx.ModelProto, opset: int, notes: list[str]) -> onnx.ModelProto:
    if opset >= TARGET_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:
        notes.append(f"kept opset {opset}: converting to {TARGET_OPSET} failed ({exc})")
        return model
    notes.append(f"converted opset {opset} -> {TARGET_OPSET}")
    return converted


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs that are not initializers (IR < 4 models list weights as inputs too)."""
    weights = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


def _pin_batch_axis(model: onnx.ModelProto, path: Path) -> int | str:
    """Give a symbolic leading axis the value 1 (others are errors); return its old spelling."""
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UnsupportedModel(
            f"{path}: relugate compiles models with one input and one output; this one has "
            f"{len(inputs)} input(s) {[i.name for i in inputs]} and "
            f"{len(model.graph.output)} output(s) {[o.name for o in model.graph.output]}"
        )
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        elem = tensor_type.elem_type
        known = elem in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(elem) if known else f"of unknown type {elem}"
        raise UnsupportedModel(
            f"{path}: input {inputs[0].name!r} is {name}; only FLOAT is supported"
        )
    if not tensor_type.HasField("shape"):
        raise UnsupportedModel(f"{path}: input {inputs[0].name!r} has no declared shape")
    batch_dim: int | str = 1  # a rank-1 input has no batch axis: its axis 0 is data
    rank = len(tensor_type.shape.dim)
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if axis == 0 and rank >= 2:
                batch_dim = int(dim.dim_value)
            continue
        if axis == 0 and len(tensor_type.shape.dim) >= 2:
            batch_dim = dim.dim_param or "N"
            dim.dim_value = 1  # a symbolic batch axis; analyses work on one sample
            continue
        raise UnsupportedModel(
            f"{path}: input {inputs[0].name!r} has a symbolic or empty dimension at axis {axis}; "
            "only the leading batch axis may be symbolic"
        )
    return batch_dim


def _infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: shapes do not check out: {first}") from exc
