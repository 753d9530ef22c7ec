"""``Network``: the normalized model as an ordered list of layers.

Analyses read it, passes return new ones (it is immutable), the importer
builds it from ONNX and the exporter writes it back.  Shapes are per
sample; ``TensorSpec`` remembers how the ONNX graph spelled its input and
output (with or without a leading batch axis) so the exported model keeps the
original names and shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import prod
from typing import Any

import numpy as np

from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Shape


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: ONNX name, full ONNX shape, and whether axis 0 is the batch."""

    name: str
    shape: Shape
    has_batch: bool
    batch_dim: int | str = 1  # how the original model spelled axis 0 ("N" for symbolic)

    @property
    def sample_shape(self) -> Shape:
        return self.shape[1:] if self.has_batch else self.shape

    @property
    def size(self) -> int:
        return prod(self.sample_shape)

    def batched_shape(self, batch: int) -> Shape:
        return (batch, *self.sample_shape)


@dataclass(frozen=True, eq=False)
class Network:
    input: TensorSpec
    output: TensorSpec
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        shapes = self.shapes()
        if shapes[-1] != self.output.sample_shape:
            raise ValueError(
                f"network output shape {shapes[-1]} does not match {self.output.sample_shape}"
            )

    # -- structure -------------------------------------------------------
    def shapes(self) -> list[Shape]:
        """Per-sample shape before the first layer and after every layer."""
        shapes = [self.input.sample_shape]
        for layer in self.layers:
            shapes.append(layer.out_shape(shapes[-1]))
        return shapes

    def with_layers(self, layers: Sequence[Layer]) -> Network:
        return replace(self, layers=tuple(layers))

    def relu_count(self) -> int:
        """Number of ReLU units (scalar activations), per sample."""
        shapes = self.shapes()
        return sum(lay.relu_units(shapes[i]) for i, lay in enumerate(self.layers))

    def param_count(self) -> int:
        return sum(layer.params() for layer in self.layers)

    def flops(self) -> int:
        shapes = self.shapes()
        return sum(layer.flops(shapes[i]) for i, layer in enumerate(self.layers))

    def stats(self) -> dict[str, int]:
        return {
            "layers": len(self.layers),
            "relus": self.relu_count(),
            "params": self.param_count(),
            "flops": self.flops(),
            "maxpools": sum(isinstance(lay, MaxPool) for lay in self.layers),
        }

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer for tables and reports."""
        shapes = self.shapes()
        rows = []
        for i, layer in enumerate(self.layers):
            rows.append(
                {
                    "index": i,
                    "name": layer.name,
                    "kind": layer.kind,
                    "what": layer.describe(),
                    "in": list(shapes[i]),
                    "out": list(shapes[i + 1]),
                    "params": layer.params(),
                }
            )
        return rows

    # -- evaluation ------------------------------------------------------
    def as_batch(self, x: np.ndarray) -> np.ndarray:
        """View ``x`` as ``(batch, *sample_shape)``: accepts flat rows or sample-shaped arrays."""
        x = np.asarray(x)
        return x.reshape((-1, *self.input.sample_shape))

    def forward(self, x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Evaluate on a batch; returns ``(batch, *output_sample_shape)`` in ``dtype``."""
        h: np.ndarray = self.as_batch(x).astype(dtype, copy=False)
        for layer in self.layers:
            h = layer.forward(h)
        return h

    def activations(self, x: np.ndarray, dtype: type = np.float64) -> list[np.ndarray]:
        """The input and every layer's output, batched."""
        acts: list[np.ndarray] = [self.as_batch(x).astype(dtype, copy=False)]
        for layer in self.layers:
            acts.append(layer.forward(acts[-1]))
        return acts

    def gradient(self, x: np.ndarray, grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output and vector-Jacobian product ``grad_out^T dF/dx`` at ``x`` (float64)."""
        acts = self.activations(x, np.float64)
        g = np.asarray(grad_out, dtype=np.float64).reshape(acts[-1].shape)
        for layer, a in zip(reversed(self.layers), reversed(acts[:-1]), strict=True):
            g = layer.backward(a, g)
        return acts[-1], g

    # -- queries used by passes ------------------------------------------
    def affine_layers(self) -> list[int]:
        return [i for i, lay in enumerate(self.layers) if isinstance(lay, Dense | Conv)]
