"""Drop layers that compute the identity: unit Scale, same-shape Reshape, identity Transpose."""

from __future__ import annotations

import numpy as np

from relugate.compiler.layers import Layer, Reshape, Scale, Shape, Transpose
from relugate.compiler.network import Network
from relugate.passes.base import CertificateEntry, PassContext, PassResult


def is_identity(layer: Layer, in_shape: Shape) -> bool:
    if isinstance(layer, Scale):
        return bool(np.all(layer.mul == 1) and np.all(layer.add == 0))
    if isinstance(layer, Reshape):
        return layer.shape == in_shape
    if isinstance(layer, Transpose):
        return layer.perm == tuple(range(len(layer.perm)))
    return False


class DropIdentity:
    name = "drop_identity"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        shapes = net.shapes()
        keep = [lay for i, lay in enumerate(net.layers) if not is_identity(lay, shapes[i])]
        dropped = [lay.name for lay in net.layers if lay not in keep]
        entries = tuple(
            CertificateEntry(self.name, "equivalent", {"layer": n}, "layer computes the identity")
            for n in dropped
        )
        return PassResult(net.with_layers(keep), bool(dropped), {"dropped": dropped}, entries)
