"""Rewrite every MaxPool into ReLU form: a balanced tree of pairwise maxima.

The network is a chain, so ``max(a, b)`` takes the chain form of
``analysis/max_template``: each tree level is one depthwise (``group = C``)
Conv and one Relu; the first Conv has the pool's kernel, strides, pads and
dilations, later ones are 1x1, and a final 1x1 Conv recombines (a later
merge can fold it into the following layer).  ``ceil(log2 k)`` ReLU levels
for a window of ``k`` elements; the template is proved with z3 once per
``(k, form)``.

Padding.  MaxPool pads with -inf, Conv with 0.  Zero padding is harmless
when every input is ``>= 0`` (every floor-mode window holds a real element):
that holds after a ReLU, or when the bounds on the domain say so.  Otherwise,
on a domain, the input is shifted by ``s = min(L, 0)`` per channel (``L``: a
CROWN lower bound): ``max(x) = max0(x - s) + s``, with ``-s`` folded into the
previous Conv/Dense bias (or a Scale) and ``+s`` into the final Conv's bias.
Without a domain such a MaxPool stays, with the reason in the report.  When
no window reaches padding and no ReLU precedes, the signed template is used:
exact for every input, no domain needed (stable-ReLU pruning may then
simplify it on the domain).

On a domain (option ``maxpool_prune``, on by default) each MaxPool instead
becomes a ``MaxTree`` over the window elements the bounds leave as possible
maxima (``max_prune``): a window left with one element is a selection, and
only windows left with several keep ReLUs, one per pair.  A ReLU right before
the pool is absorbed (the constant zero joins each window).  Each removed
element is a ``dominated`` certificate entry (window, element, the element
that dominates it, the bound, the analysis).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from relugate.compiler.errors import UnsupportedModel
from relugate.compiler.layers import (
    LAYOUT_KINDS,
    Conv,
    Dense,
    Layer,
    MaxPool,
    Relu,
    Reshape,
    Scale,
    Shape,
)
from relugate.compiler.network import Network, TensorSpec
from relugate.passes.analysis import max_template
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.steps import steps_of
from relugate.passes.base import CertificateEntry, PassContext, PassResult, unchanged
from relugate.passes.max_prune import domain_entry, prune_pool


@dataclass(frozen=True)
class Plan:
    """How to rewrite one MaxPool: template form, per-channel shift (or None), and why."""

    form: str
    shift: np.ndarray | None
    reason: str
    on_domain: bool


def _axis_windows(n: int, k: int, s: int, d: int, pad: int, out: int) -> tuple[bool, bool]:
    """(some window reaches padding, some window is all padding) along one axis."""
    pos = np.arange(out)[:, None] * s - pad + d * np.arange(k)[None, :]
    inside = (pos >= 0) & (pos < n)
    return bool(not inside.all()), bool(not inside.any(axis=1).all())


def padding_reach(pool: MaxPool, in_shape: Shape) -> tuple[bool, bool]:
    """(some window reaches padding, some window holds no real element)."""
    out = pool.out_shape(in_shape)[1:]
    axes = [
        _axis_windows(in_shape[1 + i], k, pool.strides[i], pool.dilations[i], pool.pads[i], out[i])
        for i, k in enumerate(pool.kernel)
    ]
    return any(a for a, _ in axes), any(e for _, e in axes)


def relu_before(layers: list[Layer], i: int) -> str | None:
    """Name of a Relu feeding layer ``i`` through layout layers and MaxPools only (each
    keeps ``>= 0``), if any."""
    j = i - 1
    while j >= 0 and isinstance(layers[j], (*LAYOUT_KINDS, MaxPool)):
        j -= 1
    return layers[j].name if j >= 0 and isinstance(layers[j], Relu) else None


def input_lower_bound(net: Network, i: int, ctx: PassContext) -> np.ndarray:
    """Sound (float32) lower bound of layer ``i``'s input on the domain, per element."""
    assert ctx.domain is not None
    shape = net.shapes()[i]
    prefix = Network(net.input, TensorSpec("prefix", (1, *shape), True), net.layers[:i])
    bounds = crown_bounds(steps_of(prefix), ctx.domain.lo, ctx.domain.hi)
    return bounds.lo[-1][0].reshape(shape)


def plan_for(net: Network, i: int, ctx: PassContext) -> Plan | str:
    """A Plan, or the reason this MaxPool must stay."""
    pool = net.layers[i]
    assert isinstance(pool, MaxPool)
    in_shape = net.shapes()[i]
    padded, empty = padding_reach(pool, in_shape)
    if empty:
        raise UnsupportedModel(
            "MaxPool has a window made only of padding (output -inf); pads must be < kernel",
            [(pool.name, "MaxPool")],
        )
    relu = relu_before(list(net.layers), i)
    if relu is not None:
        return Plan("nonneg", None, f"input is the output of ReLU {relu!r}, so >= 0", False)
    if not padded:
        return Plan("signed", None, "no window reaches padding", False)
    if ctx.domain is None:
        return (
            "a window reaches the -inf padding and the input is not provably >= 0 "
            "(no ReLU before it, no domain to bound it)"
        )
    low = input_lower_bound(net, i, ctx).reshape(in_shape[0], -1).min(axis=1)
    if low.min() >= 0:
        reason = f"CROWN lower bound of the input on the domain is {low.min():.4g} >= 0"
        return Plan("nonneg", None, reason, True)
    shift = np.minimum(low, 0).astype(np.float32)
    shift = np.where(shift > low, np.nextafter(shift, np.float32(-np.inf)), shift)
    reason = (
        f"CROWN lower bound L of the input on the domain (min {low.min():.4g}); the input "
        f"is shifted by -s, s = min(L, 0) per channel, so it is >= 0 and zero padding is "
        f"<= every real element: max(x) = max0(x - s) + s"
    )
    return Plan("nonneg", shift.astype(np.float64), reason, True)


def tree_layers(
    pool: MaxPool, channels: int, template: max_template.Template, shift: np.ndarray | None
) -> list[Layer]:
    """Conv/Relu layers computing ``pool`` (on the shifted input when ``shift`` is given)."""
    rank = len(pool.kernel)
    layers: list[Layer] = []
    last = len(template.matrices) - 1
    for j, m in enumerate(template.matrices):
        tap_shape = pool.kernel if j == 0 else (1,) * rank
        fan_in = 1 if j == 0 else m.shape[1]
        per_group = m.reshape(m.shape[0], fan_in, *tap_shape)
        weight = np.broadcast_to(per_group, (channels, *per_group.shape))
        weight = weight.reshape(channels * m.shape[0], fan_in, *tap_shape)
        bias = np.zeros(channels * m.shape[0])
        if j == last and shift is not None:
            bias = shift.copy()
        name = f"{pool.name}/max" if j == last else f"{pool.name}/max{j}"
        layers.append(
            Conv(
                name,
                weight=weight,
                bias=bias,
                strides=pool.strides if j == 0 else (1,) * rank,
                pads=pool.pads if j == 0 else (0,) * (2 * rank),
                dilations=pool.dilations if j == 0 else (1,) * rank,
                group=channels,
            )
        )
        if j < last:
            layers.append(Relu(f"{pool.name}/relu{j}"))
    return layers


def apply_shift(out: list[Layer], shift: np.ndarray, in_shape: Shape, name: str) -> str:
    """Subtract ``shift`` (per channel) from the input built so far in ``out``; says where."""
    per_channel = shift.reshape(-1, *(1,) * (len(in_shape) - 1))
    prev = out[-1] if out else None
    if isinstance(prev, Conv):
        out[-1] = Conv(
            prev.name,
            weight=prev.weight,
            bias=prev.bias.astype(np.float64) - shift,
            strides=prev.strides,
            pads=prev.pads,
            dilations=prev.dilations,
            group=prev.group,
        )
        return f"bias of {prev.name}"
    j = len(out) - 1
    while j >= 0 and isinstance(out[j], Reshape):
        j -= 1
    dense = out[j] if j >= 0 else None
    if isinstance(dense, Dense):
        bias = dense.bias.astype(np.float64) - np.broadcast_to(per_channel, in_shape).reshape(-1)
        out[j] = Dense(dense.name, weight=dense.weight, bias=bias)
        return f"bias of {dense.name}"
    out.append(Scale(f"{name}/shift", mul=np.ones(1), add=-per_channel))
    return f"Scale {name}/shift"


def _entry(
    pool: MaxPool, plan: Plan, proof: max_template.Proof, tree: list[Layer], where: str | None
) -> CertificateEntry:
    shift = None if plan.shift is None else [float(v) for v in plan.shift]
    justification = f"{proof.justification()}; {plan.reason}"
    if where is not None:
        justification += f"; -s folded into the {where}, +s into the bias of {tree[-1].name}"
    justification += "; exact in real arithmetic (float32 differs by rounding only)"
    where_ = {
        "layer": pool.name,
        "kernel": list(pool.kernel),
        "form": plan.form,
        "relu_levels": sum(isinstance(lay, Relu) for lay in tree),
        "layers": [lay.name for lay in tree],
        "shift": shift,
        "on_domain": plan.on_domain,
    }
    return CertificateEntry(MaxPoolToRelu.name, "equivalent", where_, justification)


OFF_REASON = (
    "off: MaxPool kept (option maxpool=relu, CLI --maxpool-to-relu, rewrites it; the tree "
    "multiplies FLOPs by about 5 on Convnet_maxpool, so it pays off only for analysis "
    "or when the domain makes most tree ReLUs stable)"
)


class MaxPoolToRelu:
    name = "maxpool_to_relu"

    def run(self, net: Network, ctx: PassContext) -> PassResult:
        if not any(isinstance(layer, MaxPool) for layer in net.layers):
            return unchanged(net, "no MaxPool")
        if ctx.options.get("maxpool", "keep") != "relu":
            return unchanged(net, OFF_REASON)
        out: list[Layer] = []
        entries: list[CertificateEntry] = []
        left: dict[str, str] = {}
        proofs: dict[str, float] = {}
        pruned: dict[str, dict[str, Any]] = {}
        rewritten = 0
        prune = ctx.domain is not None and bool(ctx.options.get("maxpool_prune", True))
        for i, layer in enumerate(net.layers):
            if not isinstance(layer, MaxPool):
                out.append(layer)
                continue
            cut = self._prune(net, i, ctx, out, pruned) if prune else None
            done = self._rewrite(net, i, ctx, out, proofs) if cut is None else cut
            if isinstance(done, str):
                left[layer.name] = done
                out.append(layer)
            else:
                entries.extend(done)
                rewritten += 1
        if any("windows" in p for p in pruned.values()):
            entries.insert(0, domain_entry(self.name, ctx))
        after = net.with_layers(out)
        before_stats, after_stats = net.stats(), after.stats()
        report = {
            "maxpools_rewritten": rewritten,
            "maxpools_left": left,
            "relus_added": after_stats["relus"] - before_stats["relus"],
            "params_before": before_stats["params"],
            "params_after": after_stats["params"],
            "flops_before": before_stats["flops"],
            "flops_after": after_stats["flops"],
            "proof_ms": proofs,
            "pruned": pruned,
            "relus_full_tree": before_stats["relus"]
            + sum(p.get("relus_full_tree", 0) for p in pruned.values()),
        }
        return PassResult(after, bool(entries), report, tuple(entries))

    def _prune(
        self, net: Network, i: int, ctx: PassContext, out: list[Layer], pruned: dict[str, Any]
    ) -> list[CertificateEntry] | None:
        """MaxPool ``i`` as a pruned MaxTree (``max_prune``), or None to build the full tree."""
        plan = plan_for(net, i, ctx)  # refuses windows made only of padding
        assert not isinstance(plan, str)
        done = prune_pool(net, i, ctx, out, self.name)
        if isinstance(done, str):
            pruned[net.layers[i].name] = {"refused": done}
            return None
        pool = net.layers[i]
        assert isinstance(pool, MaxPool)
        in_shape = net.shapes()[i]
        full = max_template.build(prod(pool.kernel), plan.form).relus()
        absorbed = prod(in_shape) if done[1]["absorbed_relu"] else 0
        windows = prod(pool.out_shape(in_shape))
        pruned[pool.name] = {
            **done[1],
            "relus_full_tree": full * windows,
            "relus_absorbed": absorbed,
        }
        return done[0]

    def _rewrite(
        self, net: Network, i: int, ctx: PassContext, out: list[Layer], proofs: dict[str, float]
    ) -> list[CertificateEntry] | str:
        """Append the tree for MaxPool ``i`` to ``out``, or say why it stays."""
        pool = net.layers[i]
        assert isinstance(pool, MaxPool)
        plan = plan_for(net, i, ctx)
        if isinstance(plan, str):
            return plan
        k = prod(pool.kernel)
        proof = max_template.proof(k, plan.form)
        proofs[f"{k}/{plan.form}"] = round(proof.millis, 1)
        if not proof.equivalent:
            return f"z3 did not prove the template: {proof.justification()}"
        in_shape = net.shapes()[i]
        where = None if plan.shift is None else apply_shift(out, plan.shift, in_shape, pool.name)
        tree = tree_layers(pool, in_shape[0], max_template.build(k, plan.form), plan.shift)
        out.extend(tree)
        return [_entry(pool, plan, proof, tree, where)]
