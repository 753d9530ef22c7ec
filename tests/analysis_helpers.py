"""Helpers shared by the bound-analysis tests: values at step boundaries, enclosure."""

from __future__ import annotations

import numpy as np

from relugate.compiler.layers import Layer, Reshape
from relugate.compiler.network import Network, TensorSpec
from relugate.passes.analysis.bounds import Bounds


def network(in_shape: tuple[int, ...], layers: list[Layer]) -> Network:
    """A batched network on samples of ``in_shape``, its output shape derived from the layers."""
    shape = in_shape
    for layer in layers:
        shape = layer.out_shape(shape)
    return Network(
        TensorSpec("x", (1, *in_shape), True), TensorSpec("y", (1, *shape), True), tuple(layers)
    )


def step_values(net: Network, x: np.ndarray, dtype: type = np.float32) -> list[np.ndarray]:
    """Values (as float64) at every analysis step boundary, computed in ``dtype``;
    Reshape layers vanish in the analysis view, so they are skipped here too."""
    h = np.asarray(x).astype(dtype).reshape((len(x), *net.input.sample_shape))
    values = [h.reshape(len(x), -1).astype(np.float64)]
    for layer in net.layers:
        h = layer.forward(h)
        if not isinstance(layer, Reshape):
            values.append(h.reshape(len(x), -1).astype(np.float64))
    return values


def assert_encloses(bounds: Bounds, values: list[np.ndarray], box_index: int = 0) -> None:
    assert len(values) == len(bounds.lo)
    for k, v in enumerate(values):
        assert np.all(v >= bounds.lo[k][box_index]), f"lower bound broken at step {k}"
        assert np.all(v <= bounds.hi[k][box_index]), f"upper bound broken at step {k}"
