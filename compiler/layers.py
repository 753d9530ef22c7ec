"""The canonical layers every pass edits and every analysis reads.

A layer maps one tensor to one tensor and is described per sample: shapes
exclude the batch axis, while ``forward``/``backward`` take and return
batched arrays ``(batch, *sample_shape)``.  Weights keep the dtype they were
imported with (float32 for ONNX models); ``forward`` computes in the dtype of
its input, so the same network evaluates in float32 (what deployment runs)
or float64 (what analyses reason about).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from relugate.compiler import kernels

Shape = tuple[int, ...]


def _frozen(a: np.ndarray) -> np.ndarray:
    """Weights are float32 (what the ONNX model stores and deployment runs), read-only."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Layer:
    """Base class; ``name`` ties the layer to the ONNX node it came from."""

    name: str

    kind = "layer"

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(type(self).__name__)

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Vector-Jacobian product at input ``x``."""
        raise NotImplementedError(type(self).__name__)

    def params(self) -> int:
        return 0

    def flops(self, in_shape: Shape) -> int:
        """Multiply-adds (counted as 2 FLOPs each) or elementwise ops, per sample."""
        return 0

    def relu_units(self, in_shape: Shape) -> int:
        """ReLU units (scalar activations) the layer computes, per sample."""
        return 0

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True, eq=False)
class Dense(Layer):
    """``y = W x + b`` on a vector; ``weight`` is ``(out, in)``."""

    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)

    kind = "dense"

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(
                f"dense {self.name}: weight {self.weight.shape}, bias {self.bias.shape}"
            )
        object.__setattr__(self, "weight", _frozen(self.weight))
        object.__setattr__(self, "bias", _frozen(self.bias))

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def out_shape(self, in_shape: Shape) -> Shape:
        if in_shape != (self.n_in,):
            raise ValueError(f"dense {self.name} expects ({self.n_in},), got {in_shape}")
        return (self.n_out,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        w = self.weight.astype(x.dtype, copy=False)
        y: np.ndarray = x @ w.T + self.bias.astype(x.dtype, copy=False)
        return y

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        g: np.ndarray = grad @ self.weight.astype(grad.dtype, copy=False)
        return g

    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    def flops(self, in_shape: Shape) -> int:
        return 2 * int(self.weight.size)

    def describe(self) -> str:
        return f"dense {self.n_in}->{self.n_out}"


@dataclass(frozen=True, eq=False)
class Conv(Layer):
    """ONNX ``Conv`` with explicit pads ``[begin..., end...]``; 1 or 2 spatial axes."""

    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    strides: Shape = ()
    pads: Shape = ()
    dilations: Shape = ()
    group: int = 1

    kind = "conv"

    def __post_init__(self) -> None:
        rank = self.weight.ndim - 2
        if rank not in (1, 2) or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(
                f"conv {self.name}: weight {self.weight.shape}, bias {self.bias.shape}"
            )
        if len(self.strides) != rank or len(self.dilations) != rank or len(self.pads) != 2 * rank:
            raise ValueError(f"conv {self.name}: attribute lengths do not match rank {rank}")
        object.__setattr__(self, "weight", _frozen(self.weight))
        object.__setattr__(self, "bias", _frozen(self.bias))

    @property
    def kernel(self) -> Shape:
        return tuple(int(k) for k in self.weight.shape[2:])

    def out_shape(self, in_shape: Shape) -> Shape:
        rank = len(self.kernel)
        cin = self.weight.shape[1] * self.group
        if len(in_shape) != rank + 1 or in_shape[0] != cin:
            raise ValueError(f"conv {self.name} expects {cin} channels x {rank}-d, got {in_shape}")
        spatial = kernels.window_output_shape(
            in_shape[1:], self.kernel, self.strides, self.pads, self.dilations
        )
        if min(spatial) < 1:
            raise ValueError(f"conv {self.name}: output would be empty for input {in_shape}")
        return (int(self.weight.shape[0]), *spatial)

    def forward(self, x: np.ndarray) -> np.ndarray:
        w = self.weight.astype(x.dtype, copy=False)
        return kernels.conv_forward(
            x, w, self.bias.astype(x.dtype), self.strides, self.pads, self.dilations, self.group
        )

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        w = self.weight.astype(grad.dtype, copy=False)
        return kernels.conv_backward(
            grad, x.shape, w, self.strides, self.pads, self.dilations, self.group
        )

    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    def flops(self, in_shape: Shape) -> int:
        out = self.out_shape(in_shape)
        return 2 * prod(out) * int(prod(self.weight.shape[1:]))

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel))
        return f"conv {self.weight.shape[1] * self.group}->{self.weight.shape[0]} k{k}"


@dataclass(frozen=True, eq=False)
class Relu(Layer):
    kind = "relu"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return np.where(x > 0, grad, 0).astype(grad.dtype)

    def flops(self, in_shape: Shape) -> int:
        return prod(in_shape)

    def relu_units(self, in_shape: Shape) -> int:
        return prod(in_shape)


@dataclass(frozen=True, eq=False)
class MaxPool(Layer):
    """ONNX ``MaxPool`` in floor mode with explicit pads (padding is -inf)."""

    kernel: Shape = ()
    strides: Shape = ()
    pads: Shape = ()
    dilations: Shape = ()

    kind = "maxpool"

    def out_shape(self, in_shape: Shape) -> Shape:
        rank = len(self.kernel)
        if len(in_shape) != rank + 1:
            raise ValueError(f"maxpool {self.name} expects a {rank}-d map, got {in_shape}")
        spatial = kernels.window_output_shape(
            in_shape[1:], self.kernel, self.strides, self.pads, self.dilations
        )
        return (in_shape[0], *spatial)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return kernels.maxpool_forward(x, self.kernel, self.strides, self.pads, self.dilations)

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return kernels.maxpool_backward(
            grad, x, self.kernel, self.strides, self.pads, self.dilations
        )

    def flops(self, in_shape: Shape) -> int:
        return prod(self.out_shape(in_shape)) * (prod(self.kernel) - 1)

    def describe(self) -> str:
        return f"maxpool k{'x'.join(map(str, self.kernel))}"


@dataclass(frozen=True, eq=False)
class Reshape(Layer):
    """Reshape each sample to ``shape`` (C order).  ``Flatten`` is a Reshape to 1-D."""

    shape: Shape = ()

    kind = "reshape"

    def out_shape(self, in_shape: Shape) -> Shape:
        if prod(in_shape) != prod(self.shape):
            raise ValueError(f"reshape {self.name}: {in_shape} cannot become {self.shape}")
        return self.shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape((x.shape[0], *self.shape))

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return grad.reshape(x.shape)

    def describe(self) -> str:
        return f"reshape {self.shape}"


@dataclass(frozen=True, eq=False)
class Transpose(Layer):
    """Permute the axes of each sample."""

    perm: Shape = ()

    kind = "transpose"

    def out_shape(self, in_shape: Shape) -> Shape:
        if sorted(self.perm) != list(range(len(in_shape))):
            raise ValueError(f"transpose {self.name}: perm {self.perm} does not fit {in_shape}")
        return tuple(in_shape[p] for p in self.perm)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.transpose((0, *(p + 1 for p in self.perm)))

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        inverse = np.argsort(self.perm)
        return grad.transpose((0, *(int(p) + 1 for p in inverse)))

    def describe(self) -> str:
        return f"transpose {self.perm}"


@dataclass(frozen=True, eq=False)
class Scale(Layer):
    """Elementwise affine ``y = x * mul + add``; arrays broadcast against the sample.

    ``div`` (set by the importer for an ONNX ``Div``, with ``mul = 1 / div``): in float32
    the layer computes ``x / div + add``, rounding as the original ``Div`` does
    (``x * (1 / div)`` can differ by an ulp, which a badly conditioned network
    amplifies past the equivalence tolerance).  Analyses, exact over the reals, read
    ``mul``; folds produce plain ``mul`` layers (the float guard checks them)."""

    mul: np.ndarray = field(repr=False)
    add: np.ndarray = field(repr=False)
    div: np.ndarray | None = field(default=None, repr=False)

    kind = "scale"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mul", _frozen(self.mul))
        object.__setattr__(self, "add", _frozen(self.add))
        if self.div is not None:
            object.__setattr__(self, "div", _frozen(self.div))

    def out_shape(self, in_shape: Shape) -> Shape:
        for arr in (self.mul, self.add):
            if np.broadcast_shapes(arr.shape, in_shape) != in_shape:
                raise ValueError(f"scale {self.name}: {arr.shape} does not broadcast to {in_shape}")
        return in_shape

    def full(self, in_shape: Shape) -> tuple[np.ndarray, np.ndarray]:
        """``mul`` and ``add`` broadcast to the full sample shape."""
        return np.broadcast_to(self.mul, in_shape), np.broadcast_to(self.add, in_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        add = self.add.astype(x.dtype, copy=False)
        if self.div is not None and x.dtype == np.float32:
            return x / self.div.astype(x.dtype, copy=False) + add
        return x * self.mul.astype(x.dtype, copy=False) + add

    def backward(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return np.broadcast_to(grad * self.mul.astype(grad.dtype, copy=False), x.shape)

    def params(self) -> int:
        return int(self.mul.size + self.add.size)

    def flops(self, in_shape: Shape) -> int:
        return 2 * prod(in_shape)


LAYOUT_KINDS = (Reshape, Transpose)
