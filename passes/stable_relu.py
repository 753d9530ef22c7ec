"""Remove ReLUs that are provably stable on the input domain (Serra et al., CPAIOR 2020).

On the domain box a bound analysis (``ctx.options["stability"]``: ``crown``,
the default; ``interval``; ``lp``, CROWN tightened by LP with dual-checked
bounds; ``milp``, exact stability by one MILP query per undecided sign, up
to HiGHS's tolerances, so not a proof) bounds every ReLU's input:

- an inactive unit (upper bound <= 0: its ReLU outputs 0) is deleted, its row
  (or conv output channel) in the layer before and its column (conv input
  channel, or the flattened block of a Dense after ``MaxPool``/``Reshape``)
  in the layer after; a conv channel goes only when inactive at every position;
- a ReLU layer whose remaining units are all active (lower bound >= 0) is
  dropped, and a Dense pair it separated is folded into one (``W2 W1``,
  ``W2 b1 + b2``) when that grows neither parameters nor FLOPs.

Rounds repeat (bounds recomputed on the reduced network) until nothing
changes.  Not done: a partly active layer keeps its ReLU, because routing its
active units around it needs a skip connection the layer chain cannot
express; a conv layer whose ReLU is dropped is not folded into its neighbour.

Float32.  Bounds enclose float32 execution (see ``analysis.steps``).  Deleting
an inactive unit removes a term ``w * (+-0)`` from each later sum, and dropping
an all-active ReLU removes an identity, so every round's network computes in
float32 what the original does, up to summation order (which the rounding
margins cover) and the sign of a zero.  The final fold is exact in real
arithmetic but changes float32 rounding: it is made when a worst-case bound
keeps every output within the 1e-5 tolerance, or (``ctx.options["fold"]``
``measured``, the default; ``proved``; ``none``) when the change measured on
domain samples stays under a quarter of it; the certificate says which.
Outside the domain nothing is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.errors import BadSpec
from relugate.compiler.layers import Conv, Dense, Layer, MaxPool, Relu, Reshape
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.milp import exact_stability_all, lp_tighten
from relugate.passes.analysis.steps import Affine, MaxPoolStep, steps_of
from relugate.passes.base import CertificateEntry, PassContext, PassResult, unchanged
from relugate.passes.merge_affine import compose

ANALYSES = ("interval", "crown", "lp", "milp")
FOLD_ERROR = TOLERANCE
"""Largest worst-case float32 output change (relative to max(1, |y|)) a fold may cause."""
FOLD_MODES = ("measured", "proved", "none")
FOLD_SAMPLES = 2048
NOT_DONE = (
    "partly active layers keep their ReLU: a linear path for their active units "
    "needs a skip connection, which the layer chain cannot express"
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
        return Site(i, None, None, (), f"relu {name!r} is fed by {what}, not dense/conv")
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
    analysis = interval_bounds if method == "interval" else crown_bounds
    bounds = analysis(steps, box.lo, box.hi)
    if method in ("lp", "milp"):
        bounds = lp_tighten(steps, bounds, time_limit=time_limit / 2)
    if method == "milp":
        _, bounds = exact_stability_all(steps, bounds, time_limit=time_limit / 2)
    step_of = _step_index(net)
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


def fold_pays(first: Dense, second: Dense) -> bool:
    """Folding grows neither parameters nor FLOPs."""
    merged = second.n_out * first.n_in
    return merged <= first.weight.size + second.weight.size and (
        merged + second.n_out <= first.params() + second.params()
    )


@dataclass
class Progress:
    """What the rounds did so far, keyed by ReLU layer name; indices are the input net's."""

    box: Box
    method: str
    pass_name: str
    origin: dict[str, np.ndarray] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[CertificateEntry] = field(default_factory=list)
    joinable: set[tuple[str, str]] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def entry(self, claim: str, layer: str, index: int, bound: str, value: float, rnd: int) -> None:
        where = {"layer": layer, "index": index, bound: value, "round": rnd}
        why = f"{self.method} bound on the domain: {bound} = {value:.9g}"
        if self.method == "milp":
            why += " (MILP decided up to HiGHS tolerances: not a proof)"
        self.entries.append(CertificateEntry(self.pass_name, claim, where, why))


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
        progress.entry("inactive", name, int(origin[c]), "hi", float(top[c]), rnd)
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
    if not np.all(lo >= 0):
        return False
    low, origin = lo.min(axis=1), progress.origin[name]
    for c in range(low.size):
        progress.entry("active", name, int(origin[c]), "lo", float(low[c]), rnd)
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


def fold_error(net: Network, i: int, box: Box) -> float:
    """Worst-case change of a float32 output, relative to ``max(1, |y|)`` as ``TOLERANCE``
    is, from folding Dense layers ``i, i + 1``.

    Both float32 computations lie within their rounding margins of the same exact
    value (the fold is exact in real arithmetic; the stored weights are rounded
    to float32 and the margin covers that); the gap is carried to the output by
    ``|W|`` (ReLU and max-pool do not widen it).  Crown bounds give ``|x|``, ``|y|``.
    """
    steps = steps_of(net)
    k = int(_step_index(net)[i])
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
    """Why folding Dense layers ``i, i + 1`` keeps float32 outputs within tolerance, or None.

    First the worst-case bound (``fold_error``, a proof; often pessimistic); failing
    that, in ``measured`` mode, the change seen on domain samples, which must stay
    under a quarter of the tolerance (evidence, not proof, and said so)."""
    bound = fold_error(before, i, box)
    if bound <= FOLD_ERROR:
        return f"worst-case float32 change {bound:.3g} (relative), proved"
    if mode != "measured":
        return None
    x = np.concatenate(
        [box.corners_and_center(), box.sample(FOLD_SAMPLES, np.random.default_rng(0))]
    )
    seen = float(mismatch(before.forward(x, np.float32), after.forward(x, np.float32)).max())
    if seen > FOLD_ERROR / 4:
        return None
    return (
        f"float32 change measured on {len(x)} domain samples: {seen:.3g} (relative; "
        f"not proved, the worst-case bound is {bound:.3g})"
    )


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


def _step_index(net: Network) -> np.ndarray:
    """Analysis step of every layer (Reshape layers have no step of their own)."""
    return np.cumsum([not isinstance(lay, Reshape) for lay in net.layers]) - 1


class StableRelu:
    name = "stable_relu"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        if ctx.domain is None:
            return unchanged(net, "no input domain: stable ReLUs are only stable on a domain")
        if ctx.domain.dim != net.input.size:
            raise BadSpec(f"domain has {ctx.domain.dim} inputs; the network has {net.input.size}")
        method = str(ctx.options.get("stability", "crown"))
        if method not in ANALYSES:
            raise BadSpec(f"unknown stability analysis {method!r}; choose from {ANALYSES}")
        time_limit = float(ctx.options.get("stability_time_limit", 300.0))
        progress = Progress(ctx.domain, method, self.name)
        current, rounds = net, 0
        for rnd in range(1, int(ctx.options.get("max_rounds", 20)) + 1):
            layers = one_round(current, progress, rnd, time_limit)
            rounds = rnd
            if layers is None:
                break
            current = current.with_layers(layers)
        fold_mode = str(ctx.options.get("fold", "measured"))
        if fold_mode not in FOLD_MODES:
            raise BadSpec(f"unknown fold mode {fold_mode!r}; choose from {FOLD_MODES}")
        current = fold(current, progress, fold_mode)
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
            "notes": [*progress.notes, NOT_DONE],
        }
        certificate = (domain_entry, *progress.entries) if changed else ()
        return PassResult(current if changed else net, changed, report, certificate)
