"""The analysis chain of a ``SkipDense``: one affine step, one ReLU step, one affine step.

The input ``x`` is carried through the ReLU step as ``relu(x) - relu(-x)``
(exact for every real ``x``), beside the inner units:

* ``expand``: ``[W1; I; -I] x + [b1; 0; 0]`` (a ``SparseAffine`` whose identity
  rows are marked exact: float32 execution does not compute them at all);
* ReLU on all of it;
* ``merge``: ``[W2, M, -M] h + b2`` (a ``Dense``).

Any sound analysis of the chain is sound for the layer.  Float32: the layer
sums ``|U|`` products plus a bias in ``outer``, ``n_in`` products in ``skip``
and adds the two; the merge step's margin, for ``|U| + 2 n_in`` terms on
``|W2| |relu| + |M| (|relu(x)| + |relu(-x)|) + |b2|``, bounds that (see
``steps``), and the expand step's first rows are the inner Gemm's own margin.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from relugate.compiler.layers import Dense, Relu
from relugate.compiler.max_tree import SparseAffine
from relugate.compiler.skip_dense import SkipDense


def lower(layer: SkipDense) -> list[tuple[SparseAffine | Relu | Dense, tuple[int, ...]]]:
    """(layer, output shape) of the three steps, in order."""
    n, units = layer.n_in, layer.inner.n_out
    eye = sparse.identity(n, format="csr", dtype=np.float64)
    w1 = sparse.csr_array(layer.inner.weight.astype(np.float64))
    matrix = sparse.csr_array(sparse.vstack([w1, eye, -eye], format="csr"))
    width = units + 2 * n
    bias = np.concatenate([layer.inner.bias.astype(np.float64), np.zeros(2 * n)])
    exact = np.concatenate([np.zeros(units, bool), np.ones(2 * n, bool)])
    expand = SparseAffine(f"{layer.name}/expand", matrix=matrix, bias=bias, exact=exact)
    m = layer.skip
    merge = Dense(
        f"{layer.name}/merge",
        weight=np.concatenate([layer.outer.weight, m, -m], axis=1),
        bias=layer.outer.bias,
    )
    return [
        (expand, (width,)),
        (Relu(f"{layer.name}/relu"), (width,)),
        (merge, (layer.n_out,)),
    ]


STEPS = 3
"""Analysis steps of one ``SkipDense``."""
