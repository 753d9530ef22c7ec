"""The pass list, in order, and the instruments that watch it run.

Read top to bottom, ``default_passes`` is the compiler:

1. fold_layout   -- drop Reshape/Transpose runs that only permute values
                    before a Dense layer, so later passes see plain vectors;
2. fold_scale    -- fold input normalization, BatchNorm and bias Adds into
                    the adjacent Dense/Conv, so each affine step is one layer;
3. merge_affine  -- merge Dense layers with nothing between (after folding
                    there may be some), when that does not grow the model;
4. drop_identity -- remove what the folds left computing the identity;
5. maxpool_to_relu -- (opt-in: option ``maxpool=relu``) every MaxPool becomes
                    a tree of max(a, b) = relu(a - b) + b built from depthwise
                    convs and ReLUs, each window template proved by z3, so the
                    next pass can remove the tree ReLUs the bounds show stable;
6. stable_relu   -- on the input domain (none: skipped), delete ReLU units
                    the bounds prove inactive, drop ReLU layers proved all
                    active and fold the Dense pairs they separated; it comes
                    last because it needs the plain Dense/Conv chain the
                    passes above produce, and only it depends on the domain.

Instruments (``--time-passes``, ``--dump-ir``, ``--verify-each``) are switched
on around the pipeline; no pass knows about them.  A ``FloatGuard``
(``float_guard.py``) undoes a pass whose float32 rounding would break the final
equivalence check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relugate.compiler.float_guard import FloatGuard
from relugate.compiler.network import Network
from relugate.passes.base import CertificateEntry, Pass, PassContext, PassResult
from relugate.passes.drop_identity import DropIdentity
from relugate.passes.fold_layout import FoldLayout
from relugate.passes.fold_scale import FoldScale
from relugate.passes.maxpool_to_relu import MaxPoolToRelu
from relugate.passes.merge_affine import MergeAffine
from relugate.passes.stable_relu import StableRelu


def default_passes() -> list[Pass]:
    return [
        FoldLayout(),
        FoldScale(),
        MergeAffine(),
        DropIdentity(),
        MaxPoolToRelu(),
        StableRelu(),
    ]


@dataclass
class StepRecord:
    """What one pass did, for the report."""

    name: str
    changed: bool
    seconds: float
    before: dict[str, int]
    after: dict[str, int]
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "changed": self.changed,
            "seconds": round(self.seconds, 6),
            "relus_before": self.before["relus"],
            "relus_after": self.after["relus"],
            "params_before": self.before["params"],
            "params_after": self.after["params"],
            "flops_before": self.before["flops"],
            "flops_after": self.after["flops"],
            "layers_before": self.before["layers"],
            "layers_after": self.after["layers"],
            "details": self.report,
        }


class Instrument:
    """Hooks around every pass; the base class does nothing."""

    def start(self, net: Network) -> None:
        return None

    def after_pass(self, index: int, p: Pass, before: Network, result: PassResult) -> None:
        return None


@dataclass
class PipelineResult:
    network: Network
    steps: list[StepRecord]
    certificate: list[CertificateEntry]


@dataclass
class Pipeline:
    passes: Sequence[Pass]
    instruments: Sequence[Instrument] = ()
    on_step: Callable[[str], None] | None = field(default=None, repr=False)
    guard: FloatGuard | None = None

    def run(self, net: Network, ctx: PassContext) -> PipelineResult:
        for inst in self.instruments:
            inst.start(net)
        steps: list[StepRecord] = []
        certificate: list[CertificateEntry] = []
        for index, p in enumerate(self.passes, start=1):
            if self.on_step is not None:
                self.on_step(p.name)
            start = time.perf_counter()
            result = self._guarded(p.run(net, ctx), net)
            seconds = time.perf_counter() - start
            steps.append(
                StepRecord(
                    p.name,
                    result.changed,
                    seconds,
                    net.stats(),
                    result.network.stats(),
                    result.report,
                )
            )
            certificate.extend(result.certificate)
            for inst in self.instruments:
                inst.after_pass(index, p, net, result)
            net = result.network
        return PipelineResult(net, steps, certificate)

    def _guarded(self, result: PassResult, before: Network) -> PassResult:
        """``result``, or ``before`` unchanged when the guard finds too much rounding."""
        if self.guard is None or not result.changed:
            return result
        error = self.guard.error(result.network)
        if error <= self.guard.limit:
            return result
        report = {**result.report, "float_guard": self.guard.reason(error)}
        return PassResult(before, False, report, ())


def pass_names() -> list[str]:
    return [p.name for p in default_passes()]


def dump_path(folder: Path, index: int, name: str) -> Path:
    return folder / f"{index:02d}_{name}.onnx"
