"""Write a ``Network`` back to ONNX through onnx-graphsurgeon.

Inside the exported graph every tensor carries a leading batch axis; the
graph's input and output keep the names and shapes of the original model
(a model without a batch axis gets a Reshape at each end).  Dense layers
become ``Gemm`` with ``transB=1``, the fixed weight layout of the canonical
form.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from relugate import __version__
from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.frontend import TARGET_OPSET
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale, Transpose
from relugate.compiler.max_tree import MaxTree
from relugate.compiler.max_tree_onnx import emit_max_tree
from relugate.compiler.network import Network
from relugate.compiler.skip_dense import SkipDense, emit_skip_dense

Emitter = Callable[[gs.Graph, Layer, gs.Variable], gs.Variable]

IR_VERSION = 8


def to_onnx(net: Network, batch: int | str | None = None) -> onnx.ModelProto:
    """The network as an ONNX model; ``batch`` overrides the input's leading axis."""
    separable = net.input.has_batch and net.output.has_batch
    if batch is None:  # the input's own spelling, where the network keeps the batch axis
        batch = net.input.batch_dim if separable else 1
    if batch != 1 and not separable:
        raise UnsupportedModel(
            "a model without a batch axis on its input and output exports with batch 1"
        )
    graph = gs.Graph(opset=TARGET_OPSET, name="relugate", producer_name="relugate")
    graph.producer_version = __version__
    x = gs.Variable(
        net.input.name,
        dtype=np.float32,
        shape=_io_shape(net.input.sample_shape, net.input.has_batch, batch, net.input.shape),
    )
    graph.inputs = [x]
    h = x
    if not net.input.has_batch:
        h = _reshape(graph, h, [1, *net.input.shape], "relugate/batch_in")
    for layer in net.layers:
        h = EMITTERS[type(layer)](graph, layer, h)
    if not net.output.has_batch:
        h = _reshape(graph, h, list(net.output.shape), "relugate/batch_out")
    out = _rename_output(graph, h, net.output.name)
    out.dtype = np.float32
    out.shape = _io_shape(net.output.sample_shape, net.output.has_batch, batch, net.output.shape)
    graph.outputs = [out]
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=True)
    model.ir_version = IR_VERSION
    return model


def _io_shape(
    sample: tuple[int, ...], has_batch: bool, batch: int | str, full: tuple[int, ...]
) -> list[int | str]:
    return [batch, *sample] if has_batch else list(full)


def _rename_output(graph: gs.Graph, h: gs.Variable, name: str) -> gs.Variable:
    """Make the last tensor carry the output's name (an Identity if it is the input itself)."""
    if h in graph.inputs:
        out = gs.Variable(name)
        graph.layer(op="Identity", name="relugate/identity", inputs=[h], outputs=[out])
        return out
    h.name = name
    return h


def _op(
    graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], **attrs: object
) -> gs.Variable:
    out = gs.Variable(f"{name}:out")
    graph.layer(op=op, name=name, inputs=inputs, outputs=[out], attrs=attrs)
    return out


def _const(name: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(value))


def _reshape(graph: gs.Graph, h: gs.Variable, shape: list[int], name: str) -> gs.Variable:
    return _op(
        graph, "Reshape", name, [h, _const(f"{name}/shape", np.array(shape, dtype=np.int64))]
    )


def _dense(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, Dense)
    w = _const(f"{layer.name}/W", layer.weight)
    b = _const(f"{layer.name}/b", layer.bias)
    return _op(graph, "Gemm", layer.name, [h, w, b], transB=1)


def _conv(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, Conv)
    w = _const(f"{layer.name}/W", layer.weight)
    b = _const(f"{layer.name}/b", layer.bias)
    return _op(
        graph,
        "Conv",
        layer.name,
        [h, w, b],
        kernel_shape=list(layer.kernel),
        strides=list(layer.strides),
        pads=list(layer.pads),
        dilations=list(layer.dilations),
        group=layer.group,
    )


def _relu(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    return _op(graph, "Relu", layer.name, [h])


def _maxpool(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, MaxPool)
    return _op(
        graph,
        "MaxPool",
        layer.name,
        [h],
        kernel_shape=list(layer.kernel),
        strides=list(layer.strides),
        pads=list(layer.pads),
        dilations=list(layer.dilations),
    )


def _reshape_layer(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, Reshape)
    if len(layer.shape) == 1:
        return _op(graph, "Flatten", layer.name, [h], axis=1)
    return _reshape(graph, h, [0, *layer.shape], layer.name)


def _transpose(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, Transpose)
    return _op(graph, "Transpose", layer.name, [h], perm=[0, *(p + 1 for p in layer.perm)])


def _scale(graph: gs.Graph, layer: Layer, h: gs.Variable) -> gs.Variable:
    assert isinstance(layer, Scale)
    out = h
    if layer.div is not None:
        out = _op(graph, "Div", f"{layer.name}/div", [out, _const(f"{layer.name}/d", layer.div)])
    elif not np.all(layer.mul == 1):
        out = _op(graph, "Mul", f"{layer.name}/mul", [out, _const(f"{layer.name}/m", layer.mul)])
    if np.any(layer.add != 0):
        out = _op(graph, "Add", f"{layer.name}/add", [out, _const(f"{layer.name}/a", layer.add)])
    if out is h:
        out = _op(graph, "Identity", layer.name, [h])
    return out


EMITTERS: dict[type, Emitter] = {
    Dense: _dense,
    Conv: _conv,
    Relu: _relu,
    MaxPool: _maxpool,
    Reshape: _reshape_layer,
    Transpose: _transpose,
    Scale: _scale,
    MaxTree: emit_max_tree,
    SkipDense: emit_skip_dense,
}
"""One ONNX emitter per canonical layer type."""
