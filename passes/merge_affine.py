"""Merge consecutive Dense layers (no nonlinearity between) when it does not
grow the model: ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``."""

from __future__ import annotations

import numpy as np

from relugate.compiler.layers import Dense, Layer
from relugate.compiler.network import Network
from relugate.passes.base import CertificateEntry, PassContext, PassResult


def compose(first: Dense, second: Dense) -> Dense:
    w1, w2 = first.weight.astype(np.float64), second.weight.astype(np.float64)
    bias = w2 @ first.bias.astype(np.float64) + second.bias.astype(np.float64)
    return Dense(second.name, weight=w2 @ w1, bias=bias)


def worth_merging(first: Dense, second: Dense) -> bool:
    merged = second.n_out * first.n_in + second.n_out
    return merged <= first.params() + second.params()


class MergeAffine:
    name = "merge_affine"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        out: list[Layer] = []
        entries: list[CertificateEntry] = []
        for layer in net.layers:
            prev = out[-1] if out else None
            if isinstance(prev, Dense) and isinstance(layer, Dense) and worth_merging(prev, layer):
                out[-1] = compose(prev, layer)
                entries.append(
                    CertificateEntry(
                        self.name,
                        "equivalent",
                        {"merged": [prev.name, layer.name]},
                        "composition of affine maps",
                    )
                )
            else:
                out.append(layer)
        report = {"merged": len(entries)}
        return PassResult(net.with_layers(out), bool(entries), report, tuple(entries))
