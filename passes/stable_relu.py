"""Remove ReLUs that are provably stable on the input domain (Serra et al., CPAIOR 2020).

On the domain box a bound analysis (``ctx.options["stability"]``: ``auto``,
the default, is ``split`` for inputs of at most 16 dimensions and ``crown``
otherwise; ``crown``; ``split``, the union of CROWN bounds over an adaptive
partition of the box into at most 1,024 sub-boxes (a unit is stable only if
stable with the same sign on every sub-box); ``interval``; ``lp``, CROWN
tightened by LP with dual-checked bounds; ``milp``, exact stability by one
MILP query per undecided sign, up to HiGHS's tolerances, so not a proof)
bounds every ReLU's input:

- an inactive unit (upper bound <= 0: its ReLU outputs 0) is deleted, its row
  (or conv output channel) in the layer before and its column (conv input
  channel, or the flattened block of a Dense after ``MaxPool``/``Reshape``)
  in the layer after; a conv channel goes only when inactive at every position;
- a ReLU layer whose remaining units are all active (lower bound >= 0) is
  dropped, and a Dense pair it separated is folded into one (``W2 W1``,
  ``W2 b1 + b2``) when that grows neither parameters nor FLOPs;
- with ``ctx.options["skip"]`` (default off), the active units of a partly
  active layer between two Dense layers leave the ReLU for a linear skip path
  (one ``SkipDense`` layer) where that lowers the parameter count
  (``linear_skip``);
- in a layer that keeps its ReLU, an active unit whose weight row is a linear
  combination of other active units' rows is removed (``stable_relu_linear``).

Rounds repeat (bounds recomputed on the reduced network) until nothing
changes.  Not done: without ``skip``, other active units of a partly active
layer keep their ReLU; a conv layer whose ReLU is dropped is not folded.

Float32.  Bounds enclose float32 execution (see ``analysis.steps``).  Deleting
an inactive unit removes a term ``w * (+-0)`` from each later sum, and dropping
an all-active ReLU removes an identity, so every round's network computes in
float32 what the original does, up to summation order (which the rounding
margins cover) and the sign of a zero: every stability claim holds for the
original's float32 execution.  The linear rewrites come after the last round;
they are exact in real arithmetic and change float32 rounding only, within
the tolerance (``ctx.options["fold"]``: ``measured``, the default, ``proved``
or ``none``; see ``stable_relu_linear``).  Outside the domain nothing is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.errors import BadSpec
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape
from relugate.compiler.network import Network
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.milp import exact_stability_all, lp_tighten
from relugate.passes.analysis.split_stability import split_bounds
from relugate.passes.analysis.steps import steps_of
from relugate.passes.base import CertificateEntry, PassContext, PassResult, unchanged
from relugate.passes.linear_skip import linear_skip
from relugate.passes.stable_relu_linear import (
    MODES,
    Progress,
    eliminate_dependent,
    fold,
    step_index,
)

ANALYSES = ("auto", "interval", "crown", "split", "lp", "milp")
SPLIT_BOXES = 1024
SPLIT_MAX_DIM = 16
"""``auto`` uses ``split`` up to this many inputs, ``crown`` above."""
NOT_DONE = (
    "partly active layers keep their ReLU: a linear path for their active units "
    "(other than linearly dependent ones) needs a skip connection, which the layer "
    "chain cannot express (option skip=True makes them, passes/linear_skip)"
)
SKIP_DONE = (
    "partly active layers: active units take a linear skip path (SkipDense) where that "
    "lowers parameters; see layers[...]['skip'] for each layer with active units"
)


@dataclass(frozen=True)
class Site:
    """A ReLU layer, the Dense/Conv feeding it, and the Dense/Conv reading it."""

    relu: int
    producer: int | None
    consumer: int | None
    between: tuple[int, ...]  # MaxPool / flattening Reshape layers from the ReLU to the consumer
    reason: str = ""  # why inactive units cannot be deleted ("" when they can)


def _pool_keeps_zero(pool: MaxPool, channel_shape: tuple[int, ...]) -> bool:
    """Every window holds a real element, so an all-zero channel pools to zero."""
    zeros = np.zeros((1, 1, *channel_shape), dtype=np.float32)
    return bool(np.all(pool.forward(zeros) == 0))


def find_site(layers: list[Layer], shapes: list[tuple[int, ...]], i: int) -> Site:
    """The deletion pattern around ReLU ``i``, or why there is none."""
    name = layers[i].name
    prev = layers[i - 1] if i else None
    if not (isinstance(prev, Dense) or (isinstance(prev, Conv) and prev.group == 1)):
        what = "the input" if prev is None else f"{prev.kind} {prev.name!r}"
        return Site(i, None, None, (), f"relu {name!r} is fed by {what}, not dense/plain conv")
    j, between = i + 1, []
    while j < len(layers) and isinstance(layers[j], MaxPool | Reshape):
        lay = layers[j]
        if isinstance(lay, MaxPool) and not _pool_keeps_zero(lay, shapes[j][1:]):
            return Site(i, i - 1, None, (), f"maxpool {lay.name!r} has all-padding windows")
        if isinstance(lay, Reshape) and len(lay.shape) != 1:
            return Site(i, i - 1, None, (), f"reshape {lay.name!r} is not a flatten")
        between.append(j)
        j += 1
    if j == len(layers):
        return Site(i, i - 1, None, (), f"relu {name!r} feeds the output (its units are outputs)")
    nxt = layers[j]
    flat = len(shapes[j]) == 1
    if (isinstance(nxt, Dense) and flat) or (isinstance(nxt, Conv) and nxt.group == 1 and not flat):
        return Site(i, i - 1, j, tuple(between))
    return Site(i, i - 1, None, (), f"relu {name!r} is read by {nxt.kind} {nxt.name!r}")


def relu_bounds(
    net: Network, box: Box, method: str, time_limit: float
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Bounds on the input of every ReLU layer (by layer index), flat, on ``box``."""
    steps = steps_of(net)
    if method == "split":
        bounds = split_bounds(steps, box.lo, box.hi, max_boxes=SPLIT_BOXES).bounds
    else:
        analysis = interval_bounds if method == "interval" else crown_bounds
        bounds = analysis(steps, box.lo, box.hi)
    if method in ("lp", "milp"):
        bounds = lp_tighten(steps, bounds, time_limit=time_limit / 2)
    if method == "milp":
        _, bounds = exact_stability_all(steps, bounds, time_limit=time_limit / 2)
    step_of = step_index(net)
    return {
        i: (bounds.lo[int(step_of[i])][0], bounds.hi[int(step_of[i])][0])
        for i, lay in enumerate(net.layers)
        if isinstance(lay, Relu)
    }


def keep_outputs(layer: Layer, keep: np.ndarray) -> Layer:
    assert isinstance(layer, Dense | Conv)
    return _with(layer, layer.weight[keep], layer.bias[keep])


def keep_inputs(layer: Layer, channels: np.ndarray, block: int) -> Layer:
    """Keep input ``channels`` (conv) or, for Dense, the flattened blocks of ``block`` columns."""
    assert isinstance(layer, Dense | Conv)
    if isinstance(layer, Conv):
        return _with(layer, layer.weight[:, channels], layer.bias)
    cols = (channels[:, None] * block + np.arange(block)[None, :]).reshape(-1)
    return _with(layer, layer.weight[:, cols], layer.bias)


def _with(layer: Dense | Conv, weight: np.ndarray, bias: np.ndarray) -> Layer:
    if isinstance(layer, Dense):
        return Dense(layer.name, weight=weight, bias=bias)
    return Conv(layer.name, weight, bias, layer.strides, layer.pads, layer.dilations, layer.group)


def one_round(net: Network, progress: Progress, rnd: int, time_limit: float) -> list[Layer] | None:
    """Delete inactive units and drop all-active ReLUs once; None when nothing changes."""
    layers, shapes = list(net.layers), net.shapes()
    bounds = relu_bounds(net, progress.box, progress.method, time_limit)
    dropped: list[int] = []
    for i, (lo_flat, hi_flat) in bounds.items():
        site = find_site(layers, shapes, i)
        channels = shapes[i][0] if site.producer is not None else prod(shapes[i])
        lo, hi = lo_flat.reshape(channels, -1), hi_flat.reshape(channels, -1)
        keep = _prune(layers, shapes, site, hi, progress, rnd)
        if _all_active(layers[i].name, lo[keep], hi[keep], progress, rnd):
            dropped.append(i)
            if 0 < i < len(layers) - 1:
                progress.joinable.add((layers[i - 1].name, layers[i + 1].name))
    changed = dropped or any(a is not b for a, b in zip(layers, net.layers, strict=True))
    return [lay for i, lay in enumerate(layers) if i not in dropped] if changed else None


def _prune(
    layers: list[Layer],
    shapes: list[tuple[int, ...]],
    site: Site,
    hi: np.ndarray,
    progress: Progress,
    rnd: int,
) -> np.ndarray:
    """Delete the site's inactive channels (rows ``hi``: channel x position); the kept ones."""
    name, channels = layers[site.relu].name, hi.shape[0]
    origin = progress.origin.setdefault(name, np.arange(channels))
    row = progress.layers.setdefault(name, {"units": hi.size, "inactive_removed": 0})
    top = hi.max(axis=1)
    if site.consumer is None:
        if np.any(top <= 0):
            progress.skipped[name] = site.reason
        return np.arange(channels)
    keep = np.flatnonzero(top > 0)
    if keep.size == channels or channels == 1:
        return np.arange(channels)
    if keep.size == 0:
        keep = np.array([int(np.argmax(top))])
        progress.notes.append(f"relu {name!r}: every unit inactive; one kept (no 0-width layer)")
    for c in np.setdiff1d(np.arange(channels), keep):
        progress.entry("inactive", name, int(origin[c]), "hi", float(top[c]), round=rnd)
    _delete(layers, shapes, site, keep)
    row["inactive_removed"] += (channels - keep.size) * hi.shape[1]  # units
    progress.origin[name] = origin[keep]
    return keep


def _all_active(name: str, lo: np.ndarray, hi: np.ndarray, progress: Progress, rnd: int) -> bool:
    """Record the layer's state; True (and certificate entries) when its ReLU is the identity."""
    progress.layers[name].update(
        active=int(np.sum(lo >= 0)),
        inactive_left=int(np.sum(hi <= 0)),
        unstable=int(np.sum((lo < 0) & (hi > 0))),
    )
    low, origin = lo.min(axis=1), progress.origin[name]
    progress.active[name] = low
    if not np.all(low >= 0):
        return False
    for c in range(low.size):
        progress.entry("active", name, int(origin[c]), "lo", float(low[c]), round=rnd)
    progress.layers[name]["relu_dropped"] = True
    return True


def _delete(
    layers: list[Layer], shapes: list[tuple[int, ...]], site: Site, keep: np.ndarray
) -> None:
    assert site.producer is not None and site.consumer is not None
    layers[site.producer] = keep_outputs(layers[site.producer], keep)
    block = prod(shapes[site.relu][1:])
    for j in site.between:
        lay = layers[j]
        if isinstance(lay, Reshape):
            block = prod(shapes[j][1:])
            layers[j] = Reshape(lay.name, shape=(keep.size * block,))
    layers[site.consumer] = keep_inputs(layers[site.consumer], keep, block)


class StableRelu:
    name = "stable_relu"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        if ctx.domain is None:
            return unchanged(net, "no input domain: stable ReLUs are only stable on a domain")
        if ctx.domain.dim != net.input.size:
            raise BadSpec(f"domain has {ctx.domain.dim} inputs; the network has {net.input.size}")
        method = str(ctx.options.get("stability", "auto"))
        if method not in ANALYSES:
            raise BadSpec(f"unknown stability analysis {method!r}; choose from {ANALYSES}")
        if method == "auto":
            method = "split" if ctx.domain.dim <= SPLIT_MAX_DIM else "crown"
        time_limit = float(ctx.options.get("stability_time_limit", 300.0))
        progress = Progress(ctx.domain, method, self.name)
        current, rounds = net, 0
        for rnd in range(1, int(ctx.options.get("max_rounds", 20)) + 1):
            layers = one_round(current, progress, rnd, time_limit)
            rounds = rnd
            if layers is None:
                break
            current = current.with_layers(layers)
        mode = str(ctx.options.get("fold", "measured"))
        if mode not in MODES:
            raise BadSpec(f"unknown fold mode {mode!r}; choose from {MODES}")
        skip = bool(ctx.options.get("skip", False))
        if skip:
            current = linear_skip(current, progress, mode)
        current = fold(eliminate_dependent(current, progress, mode), progress, mode)
        changed = bool(progress.entries)
        domain_entry = CertificateEntry(
            self.name,
            "domain",
            ctx.domain.to_json(),
            "every claim of this pass holds for inputs in this box only",
        )
        report = {
            "analysis": method,
            "rounds": rounds,
            "before": net.stats(),
            "after": current.stats(),
            "layers": progress.layers,
            "skipped": progress.skipped,
            "notes": [*progress.notes, SKIP_DONE if skip else NOT_DONE],
        }
        certificate = (domain_entry, *progress.entries) if changed else ()
        return PassResult(current if changed else net, changed, report, certificate)
