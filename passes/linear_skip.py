"""A linear skip path for the stably active units of a partly active ReLU layer.

For ``Dense(W1, b1) -> ReLU -> Dense(W2, b2)`` whose units split, on the
domain, into stably active ``A`` (lower bound >= 0: ``relu`` is the identity)
and the rest ``U`` (inactive ones are deleted before this runs):

    z2 = W2[:, U] relu(W1[U] x + b1[U]) + (W2[:, A] W1[A]) x + (b2 + W2[:, A] b1[A])

so the active units leave the ReLU and a skip term ``M x`` (``M = W2[:, A]
W1[A]``) joins the next layer: one ``SkipDense`` layer.  Made only where it
lowers the parameter count (``|A| (n_in + n_out + 1) > n_out n_in``, the skip
matrix counted) and grows no FLOPs; two rewritten blocks never share a Dense
(candidates with the larger saving go first; a rejected one frees its
neighbours).

Exact in real arithmetic; float32 rounding changes (as for ``fold`` and
``eliminate_dependent``), so a rewrite is kept only in ``measured`` mode and
when the float32 change measured on the domain stays under a quarter of the
tolerance (``stable_relu_linear.measured``).  The stability claims come from
``stable_relu``'s last round (bounds that enclose float32 execution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relugate.compiler.layers import Dense, Relu
from relugate.compiler.network import Network
from relugate.compiler.skip_dense import SkipDense
from relugate.passes.stable_relu_linear import Progress, measured


@dataclass(frozen=True, eq=False)
class Candidate:
    relu: int  # layer index of the ReLU; the Dense layers are relu - 1 and relu + 1
    active: np.ndarray  # current unit indices, stably active
    saving: int  # parameters saved (> 0)


def skip_layer(first: Dense, second: Dense, active: np.ndarray, name: str) -> SkipDense:
    """The block ``first -> relu -> second`` with units ``active`` on the linear path."""
    keep = np.setdiff1d(np.arange(first.n_out), active)
    w1, b1 = first.weight.astype(np.float64), first.bias.astype(np.float64)
    w2, b2 = second.weight.astype(np.float64), second.bias.astype(np.float64)
    skip = w2[:, active] @ w1[active]
    bias = b2 + w2[:, active] @ b1[active]
    return SkipDense(
        name,
        inner=Dense(first.name, weight=w1[keep], bias=b1[keep]),
        outer=Dense(second.name, weight=w2[:, keep], bias=bias),
        skip=skip,
    )


def block_cost(first: Dense, second: Dense) -> tuple[int, int]:
    """(parameters, FLOPs) of ``first -> relu -> second``."""
    params = first.params() + second.params()
    return params, first.flops((first.n_in,)) + first.n_out + second.flops((second.n_in,))


def skip_cost(first: Dense, second: Dense, n_active: int) -> tuple[int, int]:
    """(parameters, FLOPs) of the block once ``n_active`` units take the skip path."""
    n_in, units, n_out = first.n_in, first.n_out - n_active, second.n_out
    params = units * (n_in + 1) + n_out * (units + 1) + n_out * n_in
    flops = 2 * units * n_in + units + 2 * n_out * units + 2 * n_out * n_in + n_out
    return params, flops


def why_not(first: Dense, second: Dense, n_active: int) -> str | None:
    """Why the skip does not pay, or None when it lowers parameters and grows no FLOPs."""
    (p0, f0), (p1, f1) = block_cost(first, second), skip_cost(first, second, n_active)
    if n_active == 0:
        return "no stably active unit"
    if n_active == first.n_out:
        return "every unit active (the ReLU is dropped instead)"
    if p1 >= p0:
        return f"a skip path for {n_active} active units would take parameters {p0} -> {p1}"
    if f1 > f0:
        return f"a skip path for {n_active} active units would take FLOPs {f0} -> {f1}"
    return None


def candidates(net: Network, progress: Progress) -> list[Candidate]:
    """Blocks where the skip pays, largest saving first; the others get a note."""
    found = []
    layers = net.layers
    for i, layer in enumerate(layers):
        lows = progress.active.get(layer.name)
        if not isinstance(layer, Relu) or lows is None or not 0 < i < len(layers) - 1:
            continue
        first, second = layers[i - 1], layers[i + 1]
        if not (isinstance(first, Dense) and isinstance(second, Dense)):
            if np.any(lows >= 0) and any(isinstance(x, SkipDense) for x in (first, second)):
                progress.layers[layer.name]["skip"] = "not made: a neighbouring block took the skip"
            continue
        if lows.shape != (first.n_out,):
            continue
        active = np.flatnonzero(lows >= 0)
        reason = why_not(first, second, active.size)
        if reason is not None:
            if active.size:
                progress.layers[layer.name]["skip"] = f"not made: {reason}"
            continue
        saving = block_cost(first, second)[0] - skip_cost(first, second, active.size)[0]
        found.append(Candidate(i, active, saving))
    return sorted(found, key=lambda c: -c.saving)


def linear_skip(net: Network, progress: Progress, mode: str) -> Network:
    """Paying skips, largest saving first, each kept when its float32 change is measured
    harmless; a block whose skip is rejected leaves its neighbours free to take theirs."""
    rejected: set[str] = set()
    while True:
        found = [c for c in candidates(net, progress) if net.layers[c.relu].name not in rejected]
        for name in rejected:  # candidates() may have noted a neighbour since
            progress.layers[name]["skip"] = "not made: float32 change too large"
        if not found:
            return net
        if mode != "measured":
            for c in found:
                why = f"not made: fold mode {mode!r} (needs 'measured')"
                progress.layers[net.layers[c.relu].name]["skip"] = why
            return net
        cand, name = found[0], net.layers[found[0].relu].name
        candidate = _rewrite(net, cand)
        evidence = measured(net, candidate, progress.box)
        if evidence is None:
            rejected.add(name)
            continue
        _record(progress, net, cand, evidence)
        net = candidate


def _rewrite(net: Network, cand: Candidate) -> Network:
    """``net`` with layers ``relu - 1 .. relu + 1`` one SkipDense, named as the second Dense."""
    i = cand.relu
    first, second = net.layers[i - 1], net.layers[i + 1]
    assert isinstance(first, Dense) and isinstance(second, Dense)
    block = skip_layer(first, second, cand.active, second.name)
    return net.with_layers([*net.layers[: i - 1], block, *net.layers[i + 2 :]])


def _record(progress: Progress, net: Network, cand: Candidate, evidence: str) -> None:
    name = net.layers[cand.relu].name
    origin, lows = progress.origin[name], progress.active[name]
    why = f"linear skip path (exact in real arithmetic); {evidence}"
    for j in cand.active:
        progress.entry(
            "active", name, int(origin[j]), "lo", float(lows[j]), linear_skip=why, round="skip"
        )
    progress.origin[name] = np.delete(origin, cand.active)
    progress.layers[name]["active_skipped"] = int(cand.active.size)
    progress.layers[name]["skip"] = f"made: {cand.active.size} units, {cand.saving} params saved"
