"""NumPy kernels for the spatial layers (convolution, max-pooling).

All arrays are batched and channel-first: ``(batch, channels, *spatial)``
with one or two spatial axes.  Forward and backward passes loop over kernel
offsets, so each is a handful of strided slices and one ``einsum``; this is
the reference semantics used by tests and analyses, not the fast path (TVM
is the fast path).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """Floor-mode output length of a sliding window along one axis."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def _pad(x: np.ndarray, pads: Sequence[int], value: float) -> np.ndarray:
    rank = x.ndim - 2
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)]
    if not any(pads):
        return x
    return np.pad(x, widths, mode="constant", constant_values=value)


def _offsets(kernel: Sequence[int]) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(k) for k in kernel))


def _window(
    offset: tuple[int, ...], dilation: Sequence[int], stride: Sequence[int], out: Sequence[int]
) -> tuple[slice, ...]:
    """Slice of the padded input that kernel position ``offset`` sees for every output."""
    return (
        slice(None),
        slice(None),
        *(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, dilation, stride, out, strict=True)
        ),
    )


def _crop(pads: Sequence[int], x_shape: Sequence[int]) -> tuple[slice, ...]:
    """The unpadded region of a padded gradient."""
    rank = len(x_shape) - 2
    inner = (slice(pads[i], pads[i] + x_shape[2 + i]) for i in range(rank))
    return (slice(None), slice(None), *inner)


def _kernel_tap(offset: tuple[int, ...]) -> tuple[Any, ...]:
    """Index of one kernel position in a grouped weight ``(g, out, in, *kernel)``."""
    return (slice(None), slice(None), slice(None), *offset)


def window_output_shape(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> tuple[int, ...]:
    """Floor-mode output size of a window sliding over ``spatial``; pads are ``[begin, end]``."""
    rank = len(kernel)
    return tuple(
        output_size(spatial[i], kernel[i], strides[i], pads[i] + pads[i + rank], dilations[i])
        for i in range(rank)
    )


def conv_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> np.ndarray:
    """ONNX ``Conv`` (NCHW / NCL) with explicit pads ``[begin..., end...]``."""
    kernel = weight.shape[2:]
    out = window_output_shape(x.shape[2:], kernel, strides, pads, dilations)
    xp = _pad(x, pads, 0.0)
    batch, cin = x.shape[:2]
    cout = weight.shape[0]
    wg = weight.reshape(group, cout // group, cin // group, *kernel)
    y = np.zeros((batch, group, cout // group, *out), dtype=np.result_type(x, weight))
    for off in _offsets(kernel):
        patch = xp[_window(off, dilations, strides, out)]
        patch = patch.reshape(batch, group, cin // group, *out)
        w = wg[_kernel_tap(off)]
        y += np.einsum("bgc...,goc->bgo...", patch, w, optimize=True)
    y = y.reshape(batch, cout, *out)
    return y + bias.reshape((1, cout) + (1,) * len(out)).astype(y.dtype)


def conv_backward(
    grad: np.ndarray,
    x_shape: Sequence[int],
    weight: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> np.ndarray:
    """Gradient of ``conv_forward`` with respect to its input."""
    kernel = weight.shape[2:]
    out = grad.shape[2:]
    rank = len(kernel)
    batch, cin = x_shape[:2]
    cout = weight.shape[0]
    padded = [x_shape[2 + i] + pads[i] + pads[i + rank] for i in range(rank)]
    gx = np.zeros((batch, cin, *padded), dtype=grad.dtype)
    wg = weight.reshape(group, cout // group, cin // group, *kernel)
    gg = grad.reshape(batch, group, cout // group, *out)
    for off in _offsets(kernel):
        w = wg[_kernel_tap(off)]
        contrib = np.einsum("bgo...,goc->bgc...", gg, w, optimize=True)
        gx[_window(off, dilations, strides, out)] += contrib.reshape(batch, cin, *out)
    crop = (
        slice(None),
        slice(None),
        *(slice(pads[i], pads[i] + x_shape[2 + i]) for i in range(rank)),
    )
    return gx[crop]


def maxpool_forward(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """ONNX ``MaxPool`` (floor mode) with explicit pads; padding never wins."""
    out = window_output_shape(x.shape[2:], kernel, strides, pads, dilations)
    xp = _pad(x, pads, -np.inf)
    y = np.full(x.shape[:2] + out, -np.inf, dtype=x.dtype)
    for off in _offsets(kernel):
        np.maximum(y, xp[_window(off, dilations, strides, out)], out=y)
    return y


def maxpool_backward(
    grad: np.ndarray,
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """Gradient of ``maxpool_forward``: each output routes to its first maximal input."""
    out = grad.shape[2:]
    xp = _pad(x, pads, -np.inf)
    best = np.full(x.shape[:2] + tuple(out), -np.inf, dtype=x.dtype)
    arg = np.zeros(best.shape, dtype=np.int64)
    offsets = list(_offsets(kernel))
    for k, off in enumerate(offsets):
        v = xp[_window(off, dilations, strides, out)]
        better = v > best
        best = np.where(better, v, best)
        arg = np.where(better, k, arg)
    gx = np.zeros(xp.shape, dtype=grad.dtype)
    for k, off in enumerate(offsets):
        gx[_window(off, dilations, strides, out)] += np.where(arg == k, grad, 0.0)
    rank = len(kernel)
    crop = (
        slice(None),
        slice(None),
        *(slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(rank)),
    )
    return gx[crop]
