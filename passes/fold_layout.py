"""Remove layout layers that are not needed.

* consecutive Reshapes collapse into the last one;
* consecutive Transposes compose into one;
* a run of Reshape/Transpose layers that ends in a Dense layer is a fixed
  permutation of the input elements, so it becomes one flattening Reshape
  and the Dense layer's columns are permuted instead (e.g. the NHWC->NCHW
  Transpose before a classifier head).

Every rewrite is a permutation of values: exact in any arithmetic.
"""

from __future__ import annotations

from math import prod

import numpy as np

from relugate.compiler.layers import Dense, Layer, Reshape, Shape, Transpose
from relugate.compiler.network import Network
from relugate.passes.base import CertificateEntry, PassContext, PassResult

LAYOUT = (Reshape, Transpose)


def layout_permutation(layers: list[Layer], in_shape: Shape) -> np.ndarray:
    """Flat source index of every flat output element of a chain of layout layers."""
    h = np.arange(prod(in_shape)).reshape((1, *in_shape))
    for layer in layers:
        h = layer.forward(h)
    return h.reshape(-1)


class FoldLayout:
    name = "fold_layout"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        layers = list(net.layers)
        shapes = net.shapes()
        out: list[Layer] = []
        entries: list[CertificateEntry] = []
        i = 0
        while i < len(layers):
            j = i
            while j < len(layers) and isinstance(layers[j], LAYOUT):
                j += 1
            if j == i:
                out.append(layers[i])
                i += 1
                continue
            run = layers[i:j]
            follower = layers[j] if j < len(layers) else None
            replaced = self._rewrite(run, shapes[i], shapes[j], follower)
            if replaced is None:
                out.extend(run)
                i = j
                continue
            new_run, new_follower = replaced
            out.extend(new_run)
            entries.append(
                CertificateEntry(
                    self.name,
                    "equivalent",
                    {"replaced": [lay.name for lay in run], "by": [lay.name for lay in new_run]},
                    "layout layers only permute values",
                )
            )
            if new_follower is not None:
                out.append(new_follower)
                j += 1
            i = j
        changed = bool(entries)
        report = {"rewrites": len(entries)}
        return PassResult(net.with_layers(out), changed, report, tuple(entries))

    def _rewrite(
        self, run: list[Layer], in_shape: Shape, out_shape: Shape, follower: Layer | None
    ) -> tuple[list[Layer], Layer | None] | None:
        has_transpose = any(isinstance(lay, Transpose) for lay in run)
        if isinstance(follower, Dense) and has_transpose:
            perm = layout_permutation(run, in_shape)
            weight = np.zeros_like(follower.weight)
            weight[:, perm] = follower.weight
            flat: list[Layer] = []
            if len(in_shape) > 1:
                flat.append(Reshape(run[0].name, shape=(prod(in_shape),)))
            dense = Dense(follower.name, weight=weight, bias=follower.bias)
            return flat, dense
        if len(run) < 2:
            return None
        if not has_transpose:
            return [Reshape(run[-1].name, shape=out_shape)], None
        if all(isinstance(lay, Transpose) for lay in run):
            axes = tuple(layout_permutation_axes(run, len(in_shape)))
            return [Transpose(run[-1].name, perm=axes)], None
        return None


def layout_permutation_axes(run: list[Layer], rank: int) -> list[int]:
    """Compose the axis permutations of consecutive Transposes."""
    axes = list(range(rank))
    for lay in run:
        assert isinstance(lay, Transpose)
        axes = [axes[p] for p in lay.perm]
    return axes
