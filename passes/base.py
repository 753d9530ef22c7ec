"""What every pass shares: its context, its result, its certificate entries.

A pass is an object with a ``name`` and ``run(network, ctx) -> PassResult``.
It never edits its input (networks are immutable); ``changed`` says whether
the output differs, ``report`` holds what a person reads, and ``certificate``
holds one auditable entry per rewrite: what was claimed, where, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from relugate.compiler.domain import Box
from relugate.compiler.network import Network


@dataclass(frozen=True)
class CertificateEntry:
    pass_name: str
    claim: str  # e.g. "equivalent", "inactive", "active", "property holds"
    where: dict[str, Any]  # layer names / indices the claim is about
    justification: str  # the analysis or identity that proves it

    def to_json(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "claim": self.claim,
            "where": self.where,
            "justification": self.justification,
        }


@dataclass(frozen=True)
class PassContext:
    """What passes may rely on: the input domain (None: no domain, only exact rewrites)."""

    domain: Box | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    network: Network
    changed: bool
    report: dict[str, Any] = field(default_factory=dict)
    certificate: tuple[CertificateEntry, ...] = ()


class Pass(Protocol):
    name: str

    def run(self, net: Network, ctx: PassContext) -> PassResult: ...


def unchanged(net: Network, reason: str) -> PassResult:
    return PassResult(net, False, {"reason": reason})
