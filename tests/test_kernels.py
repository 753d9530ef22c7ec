"""NumPy kernels and layer backward passes.

Forward: ``kernels.conv_forward`` / ``maxpool_forward`` against onnxruntime
on random shapes and attributes.  Backward: every layer's ``backward`` and
``Network.gradient`` against central finite differences in float64, at
inputs away from ReLU kinks and max-pool ties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import make_model
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx_builders import assert_close

from relugate.compiler import kernels
from relugate.compiler.layers import (
    Conv,
    Dense,
    Layer,
    MaxPool,
    Relu,
    Reshape,
    Scale,
    Transpose,
)
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import session

SETTINGS = settings(max_examples=30, deadline=None)


@dataclass(frozen=True)
class Window:
    """Attributes of one sliding-window op on an input ``(batch, channels, *spatial)``."""

    x_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int = 1
    cout: int = 1

    @property
    def out(self) -> tuple[int, ...]:
        rank = len(self.kernel)
        return tuple(
            kernels.output_size(
                self.x_shape[2 + i],
                self.kernel[i],
                self.strides[i],
                self.pads[i] + self.pads[i + rank],
                self.dilations[i],
            )
            for i in range(rank)
        )


@st.composite
def windows(draw: st.DrawFn, conv: bool) -> Window:
    """Small attribute sets onnxruntime accepts (pads below the kernel, outputs non-empty)."""
    rank = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 3])) if conv else 1
    cin = group * draw(st.integers(1, 2))
    cout = group * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel * 2)
    spatial = tuple(
        draw(st.integers(max(1, d * (k - 1) + 1 - pads[i] - pads[i + rank]), 7))
        for i, (k, d) in enumerate(zip(kernel, dilations, strict=True))
    )
    batch = draw(st.integers(1, 2))
    return Window((batch, cin, *spatial), kernel, strides, pads, dilations, group, cout)


def ort_single_op(op: str, w: Window, x: np.ndarray, *weights: np.ndarray) -> np.ndarray:
    names = ["x"] + [f"w{i}" for i in range(len(weights))]
    attrs = {
        "kernel_shape": list(w.kernel),
        "strides": list(w.strides),
        "pads": list(w.pads),
        "dilations": list(w.dilations),
    }
    if op == "Conv":
        attrs["group"] = w.group
    node = helper.make_node(op, names, ["y"], **attrs)
    model = make_model(
        [node],
        [("x", x.shape)],
        [("y", None)],
        {n: v for n, v in zip(names[1:], weights, strict=True)},
    )
    return np.asarray(session(model).run(None, {"x": x})[0])


@SETTINGS
@given(w=windows(conv=True), seed=st.integers(0, 2**16))
def test_conv_forward_matches_onnxruntime(w: Window, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=w.x_shape).astype(np.float32)
    weight = rng.normal(size=(w.cout, w.x_shape[1] // w.group, *w.kernel)).astype(np.float32)
    bias = rng.normal(size=w.cout).astype(np.float32)
    expected = ort_single_op("Conv", w, x, weight, bias)
    got = kernels.conv_forward(x, weight, bias, w.strides, w.pads, w.dilations, w.group)
    assert got.dtype == np.float32
    assert got.shape == (w.x_shape[0], w.cout, *w.out)
    assert_close(expected, got, "conv_forward")
    got64 = kernels.conv_forward(
        x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64),
        w.strides, w.pads, w.dilations, w.group,
    )  # fmt: skip
    assert_close(expected, got64, "conv_forward float64")


@SETTINGS
@given(w=windows(conv=False), seed=st.integers(0, 2**16))
def test_maxpool_forward_matches_onnxruntime(w: Window, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=w.x_shape).astype(np.float32)
    assume(np.isfinite(kernels.maxpool_forward(x, w.kernel, w.strides, w.pads, w.dilations)).all())
    expected = ort_single_op("MaxPool", w, x)
    got = kernels.maxpool_forward(x, w.kernel, w.strides, w.pads, w.dilations)
    assert got.shape == (w.x_shape[0], w.x_shape[1], *w.out)
    np.testing.assert_array_equal(got, expected)  # max picks an input: exact


def test_conv_forward_known_values() -> None:
    """A hand-computed 1-d case: stride 2, dilation 2, pads (1, 0)."""
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 6)
    w = np.array([[[1.0, 10.0]]])
    y = kernels.conv_forward(x, w, np.array([0.5]), (2,), (1, 0), (2,), 1)
    # padded: [0, 0,1,2,3,4,5]; windows at 0,2,4 (taps t, t+2): 0+10*1, 1+10*3, 3+10*5
    np.testing.assert_array_equal(y, [[[10.5, 31.5, 53.5]]])


# -- finite differences ----------------------------------------------------
def numeric_vjp(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``d <v, f(x)> / dx`` by central differences."""
    h = 1e-6
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += h
        down[i] -= h
        diff = f(up.reshape(x.shape)) - f(down.reshape(x.shape))
        gflat[i] = float(np.sum(diff * v)) / (2 * h)
    return grad


def check_backward(layer: Layer, x: np.ndarray, seed: int = 0) -> None:
    y = layer.forward(x)
    assert y.shape == (x.shape[0], *layer.out_shape(x.shape[1:]))
    v = np.random.default_rng(seed).normal(size=y.shape)
    got = layer.backward(x, v)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, numeric_vjp(layer.forward, x, v), rtol=1e-5, atol=1e-6)


def away_from_zero(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 1.0, size=shape)


def distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values at least 0.01 apart: no max-pool ties a finite-difference step can cross."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5


def test_dense_backward() -> None:
    rng = np.random.default_rng(0)
    layer = Dense("d", weight=rng.normal(size=(4, 6)), bias=rng.normal(size=4))
    check_backward(layer, rng.normal(size=(3, 6)))


def test_relu_backward() -> None:
    rng = np.random.default_rng(1)
    check_backward(Relu("r"), away_from_zero(rng, 3, 2, 4))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "strides", "pads", "dilations", "group"),
    [
        ((2, 2, 5, 6), (3, 2, 3, 2), (1, 1), (0, 0, 0, 0), (1, 1), 1),
        ((1, 4, 7, 6), (4, 2, 3, 3), (2, 3), (1, 2, 0, 1), (1, 2), 2),
        ((2, 3, 6, 5), (6, 1, 2, 2), (2, 2), (1, 1, 1, 1), (2, 1), 3),
        ((2, 2, 9), (3, 2, 3), (2,), (2, 1), (2,), 1),
    ],
)
def test_conv_backward(x_shape, w_shape, strides, pads, dilations, group) -> None:
    rng = np.random.default_rng(2)
    layer = Conv(
        "c", weight=rng.normal(size=w_shape), bias=rng.normal(size=w_shape[0]),
        strides=strides, pads=pads, dilations=dilations, group=group,
    )  # fmt: skip
    check_backward(layer, rng.normal(size=x_shape))


@SETTINGS
@given(w=windows(conv=True), seed=st.integers(0, 2**16))
def test_conv_backward_is_the_adjoint(w: Window, seed: int) -> None:
    """Conv is linear: ``<conv(x), g> == <x, conv_backward(g)>`` for every x, g."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(w.cout, w.x_shape[1] // w.group, *w.kernel))
    x = rng.normal(size=w.x_shape)
    zero = np.zeros(w.cout)
    y = kernels.conv_forward(x, weight, zero, w.strides, w.pads, w.dilations, w.group)
    g = rng.normal(size=y.shape)
    gx = kernels.conv_backward(g, x.shape, weight, w.strides, w.pads, w.dilations, w.group)
    assert gx.shape == x.shape
    np.testing.assert_allclose(np.sum(y * g), np.sum(x * gx), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("x_shape", "kernel", "strides", "pads", "dilations"),
    [
        ((2, 2, 6, 6), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
        ((1, 3, 7, 5), (3, 2), (1, 2), (1, 0, 1, 1), (2, 1)),
        ((2, 2, 8), (3,), (2,), (1, 2), (1,)),
    ],
)
def test_maxpool_backward(x_shape, kernel, strides, pads, dilations) -> None:
    rng = np.random.default_rng(3)
    layer = MaxPool("p", kernel=kernel, strides=strides, pads=pads, dilations=dilations)
    check_backward(layer, distinct(rng, *x_shape))


@SETTINGS
@given(w=windows(conv=False), seed=st.integers(0, 2**16), ties=st.booleans())
def test_maxpool_backward_routes_each_output_to_one_maximal_input(w, seed, ties) -> None:
    """Every output's gradient lands, whole, on one input holding the window's max."""
    rng = np.random.default_rng(seed)
    x = (
        rng.integers(0, 3, size=w.x_shape).astype(np.float64)
        if ties
        else rng.normal(size=w.x_shape)
    )
    assume(np.isfinite(kernels.maxpool_forward(x, w.kernel, w.strides, w.pads, w.dilations)).all())
    g = rng.uniform(1.0, 2.0, size=(*w.x_shape[:2], *w.out))
    gx = kernels.maxpool_backward(g, x, w.kernel, w.strides, w.pads, w.dilations)
    np.testing.assert_allclose(gx.sum(), g.sum())
    y = kernels.maxpool_forward(x, w.kernel, w.strides, w.pads, w.dilations)
    assert np.all(x[gx != 0] >= y.min())  # only inputs that are some window's max get gradient
    # a one-hot gradient lands on an input equal to that output's max
    index = tuple(int(rng.integers(0, n)) for n in g.shape)
    one = np.zeros_like(g)
    one[index] = 1.0
    hit = kernels.maxpool_backward(one, x, w.kernel, w.strides, w.pads, w.dilations)
    assert hit.sum() == 1.0 and np.count_nonzero(hit) == 1
    assert x[np.unravel_index(np.argmax(hit), x.shape)] == y[index]


def test_maxpool_backward_ties_go_to_the_first_input() -> None:
    x = np.ones((1, 1, 2, 2))
    gx = kernels.maxpool_backward(np.ones((1, 1, 1, 1)), x, (2, 2), (1, 1), (0,) * 4, (1, 1))
    np.testing.assert_array_equal(gx, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_reshape_backward() -> None:
    rng = np.random.default_rng(4)
    check_backward(Reshape("s", shape=(6, 2)), rng.normal(size=(3, 2, 3, 2)))


@pytest.mark.parametrize("perm", [(1, 0), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
def test_transpose_backward(perm) -> None:
    rng = np.random.default_rng(5)
    shape = (2, 3, 4)[: len(perm)]
    check_backward(Transpose("t", perm=perm), rng.normal(size=(2, *shape)))


@pytest.mark.parametrize(
    ("mul_shape", "add_shape"),
    [((), ()), ((3, 1, 1), (3, 1, 1)), ((1, 4, 5), ()), ((3, 4, 5), (5,))],
)
def test_scale_backward(mul_shape, add_shape) -> None:
    rng = np.random.default_rng(6)
    layer = Scale("s", mul=rng.normal(size=mul_shape), add=rng.normal(size=add_shape))
    check_backward(layer, rng.normal(size=(2, 3, 4, 5)))


# -- Network.gradient --------------------------------------------------------
def small_cnn(rng: np.random.Generator) -> Network:
    layers = [
        Scale("norm", mul=rng.uniform(0.5, 2.0, size=(2, 1, 1)), add=rng.normal(size=(2, 1, 1))),
        Conv(
            "conv", weight=rng.normal(size=(3, 2, 3, 3)), bias=rng.normal(size=3),
            strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1,
        ),
        Relu("relu1"),
        MaxPool("pool", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)),
        Transpose("hwc", perm=(1, 2, 0)),
        Reshape("flat", shape=(3 * 3 * 2,)),
        Dense("fc1", weight=rng.normal(size=(7, 18)), bias=rng.normal(size=7)),
        Relu("relu2"),
        Dense("fc2", weight=rng.normal(size=(4, 7)), bias=rng.normal(size=4)),
        Reshape("grid", shape=(2, 2)),
    ]  # fmt: skip
    return Network(
        TensorSpec("x", (1, 2, 6, 4), True), TensorSpec("y", (1, 2, 2), True), tuple(layers)
    )


def margin(net: Network, x: np.ndarray) -> float:
    """Smallest distance of a ReLU input from 0 or of a positive pooled max from its runner-up."""
    acts = net.activations(x)
    gaps = []
    for layer, a in zip(net.layers, acts[:-1], strict=True):
        if isinstance(layer, Relu):
            gaps.append(np.abs(a).min())
        if isinstance(layer, MaxPool):
            windows = a.reshape(*a.shape[:2], a.shape[2] // 2, 2, a.shape[3] // 2, 2)
            top = np.sort(windows.transpose(0, 1, 2, 4, 3, 5).reshape(*a.shape[:2], -1, 4), axis=-1)
            gap = top[..., -1] - top[..., -2]
            gaps.append(gap[top[..., -1] > 0].min())  # ties at 0 come from dead ReLUs: harmless
    return float(min(gaps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_network_gradient_matches_finite_differences(seed) -> None:
    rng = np.random.default_rng(seed)
    net = small_cnn(rng)
    for _ in range(50):  # draw inputs until every ReLU and max is safely decided
        x = rng.normal(size=(3, 2, 6, 4))
        if margin(net, x) > 1e-3:
            break
    else:
        pytest.fail("no input away from the kinks")
    v = rng.normal(size=(3, 2, 2))
    y, g = net.gradient(x, v)
    np.testing.assert_array_equal(y, net.forward(x))
    assert g.shape == x.shape
    np.testing.assert_allclose(g, numeric_vjp(net.forward, x, v), rtol=1e-5, atol=1e-6)


def test_network_gradient_accepts_flat_rows() -> None:
    net = small_cnn(np.random.default_rng(7))
    x = np.random.default_rng(8).normal(size=(2, 48))
    v = np.random.default_rng(9).normal(size=(2, 4))
    y, g = net.gradient(x, v)
    y2, g2 = net.gradient(x.reshape(2, 2, 6, 4), v.reshape(2, 2, 2))
    np.testing.assert_array_equal(g.reshape(2, 48), g2.reshape(2, 48))
    np.testing.assert_array_equal(y, y2)
    assert y.shape == (2, 2, 2) and g.dtype == np.float64
