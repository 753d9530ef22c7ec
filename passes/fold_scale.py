"""Fold elementwise affine layers (input normalization, BatchNorm, bias Adds)
into the neighbouring Dense or Conv layer.

Rules (each an exact identity in real arithmetic; weights are re-rounded to
float32, which ``--verify-each`` checks against the 1e-5 tolerance):

* Scale -> Scale: one Scale.
* Dense/Conv -> Scale: scale the output rows/channels (Conv: only when the
  Scale is constant over each channel, as BatchNorm is).
* Scale -> layout* -> Dense: scale the columns, shift the bias by ``W @ add``.
* Scale -> Conv: per-channel Scale only, and a non-zero shift only when the
  Conv has no padding (padding is zero in the shifted space, not the raw one).
"""

from __future__ import annotations

import numpy as np

from relugate.compiler.layers import Conv, Dense, Layer, Scale, Shape
from relugate.compiler.network import Network
from relugate.passes.base import CertificateEntry, PassContext, PassResult
from relugate.passes.fold_layout import LAYOUT


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def per_channel(scale: Scale, shape: Shape) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mul, add)`` per channel (axis 0) if the Scale is constant across each channel."""
    mul, add = (_f64(a).reshape(shape[0], -1) for a in scale.full(shape))
    if np.all(mul == mul[:, :1]) and np.all(add == add[:, :1]):
        return mul[:, 0], add[:, 0]
    return None


def merge_scales(first: Scale, second: Scale, shape: Shape) -> Scale:
    m1, a1 = (_f64(a) for a in first.full(shape))
    m2, a2 = (_f64(a) for a in second.full(shape))
    return Scale(second.name, mul=m1 * m2, add=a1 * m2 + a2)


def scale_after(affine: Layer, scale: Scale, out_shape: Shape) -> Layer | None:
    """Fold a Scale that follows a Dense or Conv into it."""
    if isinstance(affine, Dense):
        mul, add = (_f64(a) for a in scale.full(out_shape))
        weight = mul[:, None] * _f64(affine.weight)
        return Dense(affine.name, weight=weight, bias=mul * _f64(affine.bias) + add)
    if isinstance(affine, Conv):
        channel = per_channel(scale, out_shape)
        if channel is None:
            return None
        mul, add = channel
        weight = _f64(affine.weight) * mul.reshape(-1, *(1,) * (affine.weight.ndim - 1))
        return _conv_like(affine, weight, mul * _f64(affine.bias) + add)
    return None


def scale_before_dense(scale: Scale, layout: list[Layer], dense: Dense, shape: Shape) -> Dense:
    """Fold ``Scale -> layout* -> Dense`` into the Dense layer."""
    mul, add = (np.broadcast_to(a, shape)[None] for a in scale.full(shape))
    for lay in layout:
        mul, add = lay.forward(mul), lay.forward(add)
    m, a = _f64(mul).reshape(-1), _f64(add).reshape(-1)
    w = _f64(dense.weight)
    return Dense(dense.name, weight=w * m[None, :], bias=_f64(dense.bias) + w @ a)


def scale_before_conv(scale: Scale, conv: Conv, shape: Shape) -> Conv | None:
    channel = per_channel(scale, shape)
    if channel is None:
        return None
    mul, add = channel
    if np.any(add != 0) and any(conv.pads):
        return None
    cout, cin_g = conv.weight.shape[:2]
    groups = conv.group
    # input channel feeding (out channel o, kernel channel j) is (o // (cout/groups)) * cin_g + j
    m = np.repeat(mul.reshape(groups, cin_g), cout // groups, axis=0)
    a = np.repeat(add.reshape(groups, cin_g), cout // groups, axis=0)
    w = _f64(conv.weight)
    trailing = (1,) * (w.ndim - 2)
    bias = _f64(conv.bias) + np.sum(
        w * a.reshape(cout, cin_g, *trailing), axis=tuple(range(1, w.ndim))
    )
    return _conv_like(conv, w * m.reshape(cout, cin_g, *trailing), bias)


def _conv_like(conv: Conv, weight: np.ndarray, bias: np.ndarray) -> Conv:
    return Conv(
        conv.name,
        weight=weight,
        bias=bias,
        strides=conv.strides,
        pads=conv.pads,
        dilations=conv.dilations,
        group=conv.group,
    )


class FoldScale:
    name = "fold_scale"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        layers = list(net.layers)
        entries: list[CertificateEntry] = []
        changed = True
        while changed:
            changed = self._fold_once(net.with_layers(layers), layers, entries)
        report = {"folded": len(entries), "scales_left": sum(isinstance(x, Scale) for x in layers)}
        return PassResult(net.with_layers(layers), bool(entries), report, tuple(entries))

    def _fold_once(
        self, net: Network, layers: list[Layer], entries: list[CertificateEntry]
    ) -> bool:
        shapes = net.shapes()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Scale):
                continue
            folded = self._try_fold(layers, shapes, i)
            if folded is None:
                continue
            start, stop, new = folded
            entries.append(
                CertificateEntry(
                    self.name,
                    "equivalent",
                    {"folded": [lay.name for lay in layers[start:stop]], "into": new.name},
                    "composition of affine maps",
                )
            )
            layers[start:stop] = [*layers[i + 1 : stop - 1], new] if start == i else [new]
            return True
        return False

    def _try_fold(
        self, layers: list[Layer], shapes: list[Shape], i: int
    ) -> tuple[int, int, Layer] | None:
        """(start, stop, replacement for the final layer of layers[start:stop]) or None."""
        scale = layers[i]
        assert isinstance(scale, Scale)
        if i > 0:
            prev = layers[i - 1]
            if isinstance(prev, Scale):
                return i - 1, i + 1, merge_scales(prev, scale, shapes[i])
            new = scale_after(prev, scale, shapes[i + 1])
            if new is not None:
                return i - 1, i + 1, new
        j = i + 1
        while j < len(layers) and isinstance(layers[j], LAYOUT):
            j += 1
        follower = layers[j] if j < len(layers) else None
        if isinstance(follower, Dense):
            return i, j + 1, scale_before_dense(scale, layers[i + 1 : j], follower, shapes[i])
        if j == i + 1 and isinstance(follower, Conv):
            conv_new = scale_before_conv(scale, follower, shapes[i])
            if conv_new is not None:
                return i, j + 1, conv_new
        return None
