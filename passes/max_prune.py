"""A MaxPool on a domain becomes a ``MaxTree`` over the window elements that can win.

``maxpool_to_relu`` calls ``prune_pool`` when it has a domain (option
``maxpool_prune``, on by default).  Per window, ``analysis.dominance`` removes
every element some other element provably dominates on the domain (CROWN
bounds of their difference, float32-sound); the window's maximum is then

* one element: a plain selection (no ReLU);
* several: the balanced tree of ``max(a, b) = b + relu(a - b)`` over them,
  ``k - 1`` ReLUs for ``k`` elements, z3-proved for each ``k`` that occurs.

A ReLU directly in front of the pool is absorbed, ``max_i relu(x_i) =
max(0, x_1, ..., x_k)`` (z3-proved too): the constant zero joins each window
as an element, so the ReLU survives only where zero and an element both can
win (the tree's ``relu(x - 0)``).  Padding never wins a max-pool window
(at least one real element is in each), so it is left out.  Exact in real
arithmetic; float32 differs by the rounding of ``Sub``/``Add`` only.
"""

from __future__ import annotations

import time
from math import prod
from typing import Any

import numpy as np

from relugate.compiler.layers import LAYOUT_KINDS, Layer, MaxPool, Relu
from relugate.compiler.max_tree import MaxTree
from relugate.compiler.network import Network, TensorSpec
from relugate.passes.analysis import max_tree_proof
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.dominance import ZERO, Removal, prune_windows
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.lp_encoding import pool_windows
from relugate.passes.analysis.steps import MaxPoolStep, steps_of
from relugate.passes.base import CertificateEntry, PassContext


def window_elements(pool: MaxPool, in_shape: tuple[int, ...], zero: bool) -> np.ndarray:
    """Flat input index of every window element, ``(windows, k)``; -1: padding."""
    wins = pool_windows(MaxPoolStep(pool, in_shape, pool.out_shape(in_shape)))
    return np.concatenate([wins, np.full((len(wins), 1), ZERO)], axis=1) if zero else wins


def build_tree(
    kept: list[list[int]], n_in: int, out: tuple[int, ...], name: str, nonneg: bool
) -> MaxTree:
    """The tree computing, for window ``w``, the maximum of ``kept[w]`` (ZERO: 0)."""
    real = sorted({e for elems in kept for e in elems if e != ZERO})
    slot = {e: t for t, e in enumerate(real)}
    src = real + ([n_in] if any(ZERO in elems for elems in kept) else [])
    slot[ZERO] = len(real)
    groups = [[slot[e] for e in sorted(elems, key=lambda e: e == ZERO)] for elems in kept]
    size, pairs = len(src), []
    while any(len(g) > 1 for g in groups):
        a: list[int] = []
        b: list[int] = []
        for w, g in enumerate(groups):
            merged = []
            for p in range(0, len(g) - 1, 2):
                a.append(g[p])
                b.append(g[p + 1])
                merged.append(size + len(a) - 1)
            groups[w] = merged + g[len(g) - len(g) % 2 :]
        pairs.append((np.array(a), np.array(b)))
        size += len(a)
    pick = np.array([g[0] for g in groups])
    return MaxTree(
        name, n_in=n_in, out=out, src=np.array(src), pairs=tuple(pairs), pick=pick, nonneg=nonneg
    )


def _input_bounds(
    net: Network, layers: list[Layer], ctx: PassContext, method: str
) -> tuple[Any, Any]:
    """Analysis steps of ``layers`` (the network as rewritten so far, up to the pool's
    input: its float32 values are what the pool will read) and their bounds."""
    assert ctx.domain is not None
    shape = net.input.sample_shape
    for layer in layers:
        shape = layer.out_shape(shape)
    prefix = Network(net.input, TensorSpec("prefix", (1, *shape), True), tuple(layers))
    steps = steps_of(prefix)
    analysis = interval_bounds if method == "interval" else crown_bounds
    return steps, analysis(steps, ctx.domain.lo, ctx.domain.hi)


def _removal_entry(pass_name: str, pool: str, r: Removal) -> CertificateEntry:
    def name(e: int) -> int | str:
        return "zero" if e == ZERO else e

    where = {
        "layer": pool,
        "index": r.window,
        "lo": r.bound,
        "element": name(r.element),
        "by": name(r.by),
        "analysis": r.analysis,
    }
    why = (
        f"{r.analysis} bound on the domain: lo = {r.bound:.9g} for x[{name(r.by)}] - "
        f"x[{name(r.element)}] (float32-sound), so the element never exceeds one left in "
        f"the window: the window's max is unchanged without it"
    )
    return CertificateEntry(pass_name, "dominated", where, why)


def prune_pool(
    net: Network, i: int, ctx: PassContext, out: list[Layer], pass_name: str
) -> tuple[list[CertificateEntry], dict[str, Any]] | str:
    """Append the MaxTree for MaxPool ``i`` to ``out`` (absorbing a ReLU just before it,
    already in ``out``); the certificate entries and a report, or why it was not done."""
    pool = net.layers[i]
    assert isinstance(pool, MaxPool)
    start = time.perf_counter()
    absorb = bool(out) and isinstance(net.layers[i - 1], Relu) and out[-1] is net.layers[i - 1]
    end = i - 1 if absorb else i
    method = "interval" if ctx.options.get("stability") == "interval" else "crown"
    steps, bounds = _input_bounds(net, out[:-1] if absorb else out, ctx, method)
    in_shape = net.shapes()[i]
    wins = window_elements(pool, in_shape, absorb)
    kept, removals = prune_windows(wins, steps, bounds, method != "interval")
    sizes = sorted({len(k) for k in kept} | ({wins.shape[1]} if absorb else set()))
    proofs = [max_tree_proof.tree_proof(k) for k in sizes if k > 1]
    if absorb:
        proofs.append(max_tree_proof.relu_proof(wins.shape[1] - 1))
    failed = [p for p in proofs if not p.equivalent]
    if failed:
        return f"z3 did not prove {failed[0].claim}: {failed[0].status}"
    relu = out.pop().name if absorb else None
    tree = build_tree(
        kept,
        prod(net.shapes()[end]),
        pool.out_shape(in_shape),
        pool.name,
        nonneg=relu is None and _after_relu(out),
    )
    out.append(tree)
    entries = [_removal_entry(pass_name, pool.name, r) for r in removals]
    why = "; ".join(p.justification() for p in proofs) or "every window keeps one element"
    where = {
        "layer": pool.name,
        "absorbed_relu": relu,
        "relus": tree.relu_units(()),
        "depth": tree.depth,
        "layers": [tree.name],
    }
    entries.append(CertificateEntry(pass_name, "equivalent", where, f"{why}; {DOMAIN_NOTE}"))
    report = {
        "windows": len(kept),
        "one_element": sum(len(k) == 1 for k in kept),
        "zero": sum(k == [ZERO] for k in kept),
        "elements_kept": sum(len(k) for k in kept),
        "removed": {m: sum(r.analysis == m for r in removals) for m in ("interval", "crown")},
        "absorbed_relu": relu,
        "relus": tree.relu_units(()),
        "depth": tree.depth,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return entries, report


DOMAIN_NOTE = (
    "elements removed only where the certificate's 'dominated' entries prove them "
    "dominated on the domain; exact in real arithmetic (float32 differs by the rounding "
    "of Sub/Add only)"
)


def _after_relu(out: list[Layer]) -> bool:
    """The layers built so far end in a Relu (through layout layers): the input is >= 0
    for every input of the network."""
    j = len(out) - 1
    while j >= 0 and isinstance(out[j], LAYOUT_KINDS):
        j -= 1
    return j >= 0 and isinstance(out[j], Relu)


def domain_entry(pass_name: str, ctx: PassContext) -> CertificateEntry:
    assert ctx.domain is not None
    return CertificateEntry(
        pass_name,
        "domain",
        ctx.domain.to_json(),
        "every 'dominated' claim of this pass holds for inputs in this box only",
    )
