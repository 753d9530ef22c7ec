"""The analysis view of a ``Network``: a chain of steps on flat vectors.

Every canonical layer becomes one step acting on the flattened (C-order)
sample: ``Affine`` (Dense, Conv, Transpose, Scale: ``y = W x + b`` given as a
linear operator), ``ReluStep`` and ``MaxPoolStep``.  Reshape disappears
(it is the identity on flat vectors).

Float32 soundness.  The deployed network runs in float32, so each affine step
may land anywhere within ``margin(|x|max)`` of the exact ``W x + b``: the
classic bound for a dot product of ``n`` terms evaluated in any order,
``|fl(w.x + b) - (w.x + b)| <= gamma_{n+2} (|w|.|x| + |b|)`` with
``gamma_k = k u / (1 - k u)`` and ``u = 2^-24``; the two extra terms cover the
bias add and the rounding of folded weights.  Analyses treat that as a
bounded perturbation added to every affine output.  ReLU and max are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np

from relugate.compiler import kernels
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape, Scale, Transpose
from relugate.compiler.max_tree import MaxTree, SparseAffine
from relugate.compiler.network import Network
from relugate.compiler.skip_dense import SkipDense

U32 = 2.0**-24
"""Unit roundoff of float32."""
U64 = 2.0**-53


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


@dataclass(frozen=True, eq=False)
class Affine:
    """``y = W x + b`` on flat vectors, ``W`` given as an operator."""

    layer: Layer
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def n_in(self) -> int:
        return prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return prod(self.out_shape)

    # -- the operator -----------------------------------------------------
    @cached_property
    def weight64(self) -> np.ndarray:
        """Dense/Conv weights as float64, converted once (every bound pass reads them)."""
        assert isinstance(self.layer, Dense | Conv)
        return self.layer.weight.astype(np.float64)

    @cached_property
    def abs_weight64(self) -> np.ndarray:
        return np.abs(self.weight64)

    def bias(self) -> np.ndarray:
        lay = self.layer
        if isinstance(lay, Dense):
            return lay.bias.astype(np.float64)
        if isinstance(lay, Conv):
            return np.repeat(lay.bias.astype(np.float64), self.n_out // lay.bias.size)
        if isinstance(lay, Scale):
            return np.broadcast_to(lay.add, self.out_shape).astype(np.float64).reshape(-1)
        if isinstance(lay, SparseAffine):
            return lay.bias.astype(np.float64)
        return np.zeros(self.n_out)

    def apply(self, x: np.ndarray, absolute: bool = False) -> np.ndarray:
        """``W x`` (or ``|W| x``) for rows ``x`` of shape ``(..., n_in)``; no bias."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.n_in)
        lay = self.layer
        if isinstance(lay, Dense | Conv):
            w = self.abs_weight64 if absolute else self.weight64
        if isinstance(lay, Dense):
            y = flat @ w.T
        elif isinstance(lay, Conv):
            y = kernels.conv_forward(
                flat.reshape(-1, *self.in_shape),
                w,
                np.zeros(w.shape[0]),
                lay.strides,
                lay.pads,
                lay.dilations,
                lay.group,
            )
        elif isinstance(lay, Scale):
            m = np.broadcast_to(lay.mul, self.in_shape).astype(np.float64).reshape(-1)
            y = flat * (np.abs(m) if absolute else m)
        elif isinstance(lay, Transpose):
            y = lay.forward(flat.reshape(-1, *self.in_shape))
        elif isinstance(lay, SparseAffine):
            y = lay.apply(flat, absolute)
        else:
            raise TypeError(f"{type(lay).__name__} is not affine")
        return y.reshape(*lead, self.n_out)

    def apply_transpose(self, a: np.ndarray) -> np.ndarray:
        """``a W`` for rows ``a`` of shape ``(..., n_out)``: back-substitution."""
        lead = a.shape[:-1]
        flat = a.reshape(-1, self.n_out)
        lay = self.layer
        if isinstance(lay, Dense):
            y = flat @ self.weight64
        elif isinstance(lay, Conv):
            y = kernels.conv_backward(
                flat.reshape(-1, *self.out_shape),
                (len(flat), *self.in_shape),
                self.weight64,
                lay.strides,
                lay.pads,
                lay.dilations,
                lay.group,
            )
        elif isinstance(lay, Scale):
            m = np.broadcast_to(lay.mul, self.in_shape).astype(np.float64).reshape(-1)
            y = flat * m
        elif isinstance(lay, Transpose):
            y = lay.backward(
                np.empty((len(flat), *self.in_shape)), flat.reshape(-1, *self.out_shape)
            )
        elif isinstance(lay, SparseAffine):
            y = lay.apply_transpose(flat)
        else:
            raise TypeError(f"{type(lay).__name__} is not affine")
        return y.reshape(*lead, self.n_in)

    def terms(self) -> int:
        """Products summed per output (for the rounding bound)."""
        lay = self.layer
        if isinstance(lay, Dense):
            return lay.n_in
        if isinstance(lay, Conv):
            return int(prod(lay.weight.shape[1:]))
        return 1

    def margin(self, x_abs: np.ndarray) -> np.ndarray:
        """Largest float32 rounding error of each output, given ``|x| <= x_abs`` (rows)."""
        if isinstance(self.layer, Transpose):
            return np.zeros((*x_abs.shape[:-1], self.n_out))
        magnitude = self.apply(x_abs, absolute=True) + np.abs(self.bias())
        if isinstance(self.layer, SparseAffine):  # per row; exact rows have no error
            t = self.layer.row_terms()
            factor = np.where(t > 0, gamma(t + 2) + 4 * t * U64, 0.0)  # type: ignore[arg-type]
            return factor * magnitude * (1 + 1e-6)
        # gamma for float32, plus float64 slack for the analysis' own arithmetic
        return (gamma(self.terms() + 2) + 4 * self.terms() * U64) * magnitude * (1 + 1e-6)


@dataclass(frozen=True, eq=False)
class ReluStep:
    layer: Relu
    n: int


@dataclass(frozen=True, eq=False)
class MaxPoolStep:
    layer: MaxPool
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: np.ndarray) -> np.ndarray:
        lead = x.shape[:-1]
        y = self.layer.forward(x.reshape(-1, *self.in_shape))
        return y.reshape(*lead, prod(self.out_shape))


Step = Affine | ReluStep | MaxPoolStep


def steps_of(net: Network) -> list[Step]:
    """The flat analysis chain of ``net`` (Reshape layers vanish)."""
    shapes = net.shapes()
    steps: list[Step] = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Reshape):
            continue
        if isinstance(layer, Relu):
            steps.append(ReluStep(layer, prod(shapes[i])))
        elif isinstance(layer, MaxPool):
            steps.append(MaxPoolStep(layer, shapes[i], shapes[i + 1]))
        elif isinstance(layer, Dense | Conv | Scale | Transpose):
            steps.append(Affine(layer, shapes[i], shapes[i + 1]))
        elif isinstance(layer, MaxTree):
            steps += _max_tree_steps(layer, shapes[i])
        elif isinstance(layer, SkipDense):
            steps += _skip_dense_steps(layer)
        else:
            raise TypeError(f"no analysis step for layer {layer.name!r} ({layer.kind})")
    return steps


def _max_tree_steps(tree: MaxTree, in_shape: tuple[int, ...]) -> list[Step]:
    """A MaxTree as affine and ReLU steps (``max_tree_steps.lower``)."""
    from relugate.passes.analysis.max_tree_steps import lower

    out: list[Step] = []
    shape = in_shape
    for layer, out_shape in lower(tree, in_shape):
        if isinstance(layer, Relu):
            out.append(ReluStep(layer, prod(out_shape)))
        else:
            out.append(Affine(layer, shape, out_shape))
        shape = out_shape
    return out


def _skip_dense_steps(layer: SkipDense) -> list[Step]:
    """A SkipDense as affine, ReLU, affine steps (``skip_dense_steps.lower``)."""
    from relugate.passes.analysis.skip_dense_steps import lower

    out: list[Step] = []
    shape: tuple[int, ...] = (layer.n_in,)
    for lay, out_shape in lower(layer):
        if isinstance(lay, Relu):
            out.append(ReluStep(lay, prod(out_shape)))
        else:
            out.append(Affine(lay, shape, out_shape))
        shape = out_shape
    return out


def float32_box(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box widened to float32 values: inputs are rounded to float32 before the model."""
    lo32 = lo.astype(np.float32)
    hi32 = hi.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    hi32 = np.where(hi32.astype(np.float64) < hi, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return lo32.astype(np.float64), hi32.astype(np.float64)
