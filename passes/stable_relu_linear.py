"""The linear half of ``stable_relu``, run once the deletions reach a fixed point.

- ``eliminate_dependent``: in a layer whose ReLU stays (some units unstable),
  an always-active unit is the affine function ``W_j x + b_j`` of the layer's
  input; when its weight row is a linear combination of other active units'
  rows (always so once more units are active than the layer has inputs, as in
  ACAS Xu's first layer), it equals an affine function of those units and is
  removed: its outgoing column is added onto theirs, its constant onto the next
  bias (Serra et al., CPAIOR 2020, Section 4).
- ``fold``: Dense pairs a dropped ReLU separated become one (``W2 W1``).

Both are exact in real arithmetic (up to a float64 residual far below float32
rounding) but change float32 rounding.  A fold is made when a worst-case bound
keeps every output within the 1e-5 tolerance, or, in ``measured`` mode, when
the change measured on domain samples stays under a quarter of it;
eliminations only on measurement.  The certificate says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import linalg

from relugate.compiler.domain import Box
from relugate.compiler.layers import Dense, Layer, Relu, Reshape
from relugate.compiler.max_tree import MaxTree
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch
from relugate.compiler.skip_dense import SkipDense
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.max_tree_steps import step_count
from relugate.passes.analysis.skip_dense_steps import STEPS as SKIP_STEPS
from relugate.passes.analysis.steps import Affine, MaxPoolStep, steps_of
from relugate.passes.base import CertificateEntry
from relugate.passes.merge_affine import compose

FOLD_ERROR = TOLERANCE
"""Largest float32 output change (relative to max(1, |y|)) a linear rewrite may cause."""
MODES = ("measured", "proved", "none")
SAMPLES = 2048
RANK_TOL = 1e-9
"""Relative size below which a pivot of the active rows counts as zero (and the
largest float64 residual accepted for a dependent row)."""


@dataclass
class Progress:
    """What stable_relu did so far, keyed by ReLU layer name; indices are the input net's."""

    box: Box
    method: str
    pass_name: str
    origin: dict[str, np.ndarray] = field(default_factory=dict)
    active: dict[str, np.ndarray] = field(default_factory=dict)  # lower bounds, current units
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[CertificateEntry] = field(default_factory=list)
    joinable: set[tuple[str, str]] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def entry(
        self, claim: str, layer: str, index: int, bound: str, value: float, **more: Any
    ) -> None:
        where = {"layer": layer, "index": index, bound: value, **more}
        why = f"{self.method} bound on the domain: {bound} = {value:.9g}"
        if self.method == "milp":
            why += " (MILP decided up to HiGHS tolerances: not a proof)"
        self.entries.append(CertificateEntry(self.pass_name, claim, where, why))


def measured(before: Network, after: Network, box: Box) -> str | None:
    """The float32 change seen on the domain's corners, center and samples, when small."""
    x = np.concatenate([box.corners_and_center(), box.sample(SAMPLES, np.random.default_rng(0))])
    seen = float(mismatch(before.forward(x, np.float32), after.forward(x, np.float32)).max())
    if seen > FOLD_ERROR / 4:
        return None
    return f"float32 change measured on {len(x)} domain samples: {seen:.3g} (relative; not proved)"


# --- dependent active units ----------------------------------------------------


def dependent_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``rows`` into a basis and rows that are combinations of it:
    ``(basis, dependent, coeffs)`` with ``rows[dependent] ~= coeffs.T @ rows[basis]``."""
    _, r, piv = linalg.qr(rows.T, pivoting=True, mode="economic")
    diag = np.abs(np.diag(r))
    scale = max(float(np.abs(rows).max()), 1e-300)
    rank = int(np.sum(diag > RANK_TOL * scale))
    basis, rest = piv[:rank], piv[rank:]
    if rank == 0:  # every row is zero: each unit is a constant, a combination of nothing
        return basis, rest, np.zeros((0, len(rest)))
    coeffs = np.linalg.lstsq(rows[basis].T, rows[rest].T, rcond=None)[0].reshape(rank, -1)
    residual = np.abs(rows[basis].T @ coeffs - rows[rest].T).max(axis=0, initial=0.0)
    ok = residual <= RANK_TOL * scale * (1 + np.abs(coeffs).sum(axis=0))
    return basis, rest[ok], coeffs[:, ok]


def _eliminate(net: Network, i: int, lows: np.ndarray) -> tuple[Network, np.ndarray, np.ndarray]:
    """Remove dependent active units of ReLU ``i`` (Dense before and after); returns the
    new net, the removed units and the basis (current indices)."""
    first, second = net.layers[i - 1], net.layers[i + 1]
    assert isinstance(first, Dense) and isinstance(second, Dense)
    act = np.flatnonzero(lows >= 0)
    w1, b1 = first.weight.astype(np.float64), first.bias.astype(np.float64)
    basis, dep, coeffs = dependent_rows(w1[act])
    basis, dep = act[basis], act[dep]
    w2, b2 = second.weight.astype(np.float64), second.bias.astype(np.float64)
    w2[:, basis] += w2[:, dep] @ coeffs.T
    b2 = b2 + w2[:, dep] @ (b1[dep] - coeffs.T @ b1[basis])
    keep = np.setdiff1d(np.arange(first.n_out), dep)
    layers = list(net.layers)
    layers[i - 1] = Dense(first.name, weight=w1[keep], bias=b1[keep])
    layers[i + 1] = Dense(second.name, weight=w2[:, keep], bias=b2)
    return net.with_layers(layers), dep, basis


def eliminate_dependent(net: Network, progress: Progress, mode: str) -> Network:
    """``_eliminate`` on every ReLU between two Dense layers, kept where measured harmless."""
    for i, layer in enumerate(net.layers):
        lows = progress.active.get(layer.name)
        if mode != "measured" or not isinstance(layer, Relu) or lows is None:
            continue
        if not np.any(lows >= 0):
            continue
        if not (0 < i < len(net.layers) - 1 and _dense_pair(net, i)):
            continue
        candidate, dep, basis = _eliminate(net, i, lows)
        evidence = measured(net, candidate, progress.box) if dep.size else None
        if evidence is None:
            if dep.size:
                progress.notes.append(f"relu {layer.name!r}: dependent units kept (float32)")
            continue
        origin = progress.origin[layer.name]
        for j in dep:
            more = {"basis": origin[basis].tolist(), "linear_dependence": evidence}
            progress.entry("active", layer.name, int(origin[j]), "lo", float(lows[j]), **more)
        progress.origin[layer.name] = np.delete(origin, dep)
        progress.layers[layer.name]["active_dependent_removed"] = int(dep.size)
        net = candidate
    return net


def _dense_pair(net: Network, i: int) -> bool:
    return isinstance(net.layers[i - 1], Dense) and isinstance(net.layers[i + 1], Dense)


# --- folds ---------------------------------------------------------------------


def fold_pays(first: Dense, second: Dense) -> bool:
    """Folding grows neither parameters nor FLOPs."""
    merged = second.n_out * first.n_in
    return merged <= first.weight.size + second.weight.size and (
        merged + second.n_out <= first.params() + second.params()
    )


def fold_error(net: Network, i: int, box: Box) -> float:
    """Worst-case change of a float32 output, relative to ``max(1, |y|)`` as ``TOLERANCE``
    is, from folding Dense layers ``i, i + 1``.

    Both float32 computations lie within their rounding margins of the same exact
    value (the stored folded weights are rounded to float32; the margin covers
    that); the gap is carried to the output by ``|W|`` (ReLU and max-pool do not
    widen it).  Crown bounds give ``|x|`` and ``|y|``.
    """
    steps = steps_of(net)
    k = int(step_index(net)[i])
    first, second = steps[k], steps[k + 1]
    assert isinstance(first, Affine) and isinstance(second, Affine)
    assert isinstance(first.layer, Dense) and isinstance(second.layer, Dense)
    bounds = crown_bounds(steps, box.lo, box.hi)
    x_abs, mid_abs = (np.maximum(np.abs(bounds.lo[j]), np.abs(bounds.hi[j])) for j in (k, k + 1))
    merged = Affine(compose(first.layer, second.layer), first.in_shape, second.out_shape)
    gap = second.apply(first.margin(x_abs), absolute=True) + second.margin(mid_abs)
    gap = gap + merged.margin(x_abs)
    for step in steps[k + 2 :]:
        if isinstance(step, Affine):
            gap = step.apply(gap, absolute=True)
        elif isinstance(step, MaxPoolStep):
            gap = step.forward(gap)
    lo, hi = bounds.output()
    smallest = np.where(lo > 0, lo, np.where(hi < 0, -hi, 0.0))  # least |y| on the domain
    return float(np.max(gap / np.maximum(1.0, smallest - gap)))


def fold_evidence(before: Network, after: Network, i: int, box: Box, mode: str) -> str | None:
    """Why folding Dense layers ``i, i + 1`` keeps float32 outputs within tolerance, or None:
    the worst-case bound (a proof, often pessimistic), else (``measured``) samples."""
    bound = fold_error(before, i, box)
    if bound <= FOLD_ERROR:
        return f"worst-case float32 change {bound:.3g} (relative), proved"
    seen = measured(before, after, box) if mode == "measured" else None
    return None if seen is None else f"{seen}; the worst-case bound is {bound:.3g}"


def fold(net: Network, progress: Progress, mode: str) -> Network:
    """Fold the Dense pairs a dropped ReLU separated, where that grows neither parameters
    nor FLOPs and keeps float32 outputs within tolerance (``fold_evidence``)."""
    i = 0
    while i + 1 < len(net.layers) and mode != "none":
        first, second = net.layers[i], net.layers[i + 1]
        i += 1
        if not (isinstance(first, Dense) and isinstance(second, Dense)):
            continue
        if (first.name, second.name) not in progress.joinable or not fold_pays(first, second):
            continue
        folded = net.with_layers(
            [*net.layers[: i - 1], compose(first, second), *net.layers[i + 1 :]]
        )
        evidence = fold_evidence(net, folded, i - 1, progress.box, mode)
        if evidence is None:
            progress.notes.append(f"{first.name!r}, {second.name!r} not folded: float32 rounding")
            continue
        i -= 1  # the merged layer (named like ``second``) may fold with the next one
        net = folded
        why = f"composition of affine maps (exact in real arithmetic); {evidence}"
        merged = {"merged": [first.name, second.name]}
        progress.entries.append(CertificateEntry(progress.pass_name, "equivalent", merged, why))
    return net


def step_index(net: Network) -> np.ndarray:
    """Analysis step of every layer, its last one (Reshape layers have no step of their
    own; a MaxTree has several, ``max_tree_steps``)."""
    return np.cumsum([_steps(lay) for lay in net.layers]) - 1


def _steps(lay: Layer) -> int:
    if isinstance(lay, Reshape):
        return 0
    if isinstance(lay, MaxTree):
        return step_count(lay)
    return SKIP_STEPS if isinstance(lay, SkipDense) else 1
