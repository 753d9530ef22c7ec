"""``certificate.json``: what a gated compile proved, enough to re-check it alone.

It records, per property: the spec (source, sha256 of the file, its text),
the verdict on the original file (and on the compiled core when it holds),
whether it is gated, and per case the input box and the output range the
gates were sized from and proved over; then the gates, the z3 proof of every
case, the sha256 of the input model and of the shipped ``model.onnx``, and
the versions of the tools.  ``relugate check`` (``compiler/check.py``)
re-derives and re-proves all of it from this file and the bundle.
"""

from __future__ import annotations

import gzip
import hashlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from relugate import __version__
from relugate.compiler.domain import Box
from relugate.compiler.fidelity import fidelity
from relugate.compiler.frontend import LoadedModel
from relugate.compiler.gates_onnx import append_gates
from relugate.compiler.hidden_onnx import append_clamp, find_cut
from relugate.compiler.network import TensorSpec
from relugate.compiler.spec import Property
from relugate.passes.analysis.gate_design import SHELL
from relugate.passes.analysis.gate_proof import Z3_TIMEOUT_MS
from relugate.passes.insert_gates import GateResult, insert_gates

FORMAT = "relugate-certificate/1"
HIDDEN_PROOF = (
    "hidden gate: per case, verify_model on the network after the clamped layer (input box: "
    "the case's CROWN box of that layer clipped to the region), every case 'holds'"
)
TOOLS = ("onnx", "onnxruntime", "z3-solver", "numpy", "scipy")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def spec_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")


def tool_versions() -> dict[str, str]:
    versions = {"relugate": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
            versions[name] = "missing"
    return versions


def _property_json(prop: Property, spec: Path, result: GateResult, p: int) -> dict[str, Any]:
    text = spec_text(spec)
    verdict = result.verdicts[p]
    return {
        "source": prop.source,
        "path": str(spec.absolute()),
        "sha256": sha256_file(spec),
        "text_sha256": sha256_bytes(text.encode()),
        "text": text,
        "verdict_original": verdict.original,
        "verdict_core": verdict.core,
        "gated": verdict.gated,
        "cases": [
            {
                "box": case.box.to_json(),
                "output_range": {"lo": lo.tolist(), "hi": hi.tolist()},
            }
            for case, (lo, hi) in zip(prop.cases, result.ranges[p], strict=True)
        ],
    }


def build_certificate(
    loaded: LoadedModel,
    props: Sequence[Property],
    specs: Sequence[Path],
    result: GateResult,
    domain: Box | None,
    model_sha256: str,
    timeout: float,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "tools": tool_versions(),
        "input_model": {"path": str(loaded.path.absolute()), "sha256": loaded.sha256},
        "output_model": {"file": "model.onnx", "sha256": model_sha256},
        "domain": None if domain is None else domain.to_json(),
        "verify_timeout": timeout,
        "properties": [
            _property_json(prop, spec, result, p)
            for p, (prop, spec) in enumerate(zip(props, specs, strict=True))
        ],
        "gates": [gate.to_json() for gate in result.gates],
        "hidden_gate": None if result.hidden is None else result.hidden.to_json(),
        "gate_placement": result.placement,
        "proof": {
            "method": "z3 over the reals: every case of every property, all gates in order, "
            "outputs in the case's CROWN range, threshold rounding |e| <= eps",
            "shell": SHELL,
            "z3_timeout_ms": Z3_TIMEOUT_MS,
            "cases": [proof.to_json() for proof in result.proofs],
            "hidden": None if result.hidden is None else HIDDEN_PROOF,
            "seconds": result.seconds,
        },
    }


def shipped_model(core: onnx.ModelProto, result: GateResult) -> onnx.ModelProto:
    """The core with the result's output gates, or with its hidden gate."""
    hidden = result.hidden
    if hidden is None:
        return append_gates(core, result.gates)
    cut = find_cut(core, hidden.layer)
    return append_clamp(core, cut, hidden.lo, hidden.hi)


@dataclass
class Gating:
    """What the gate step adds to a compile: the shipped model, report keys, certificate."""

    model: onnx.ModelProto
    result: GateResult
    report: dict[str, Any]

    def certificate(
        self,
        loaded: LoadedModel,
        props: Sequence[Property],
        specs: Sequence[Path],
        domain: Box | None,
        model_sha256: str,
        timeout: float,
    ) -> dict[str, Any]:
        return build_certificate(loaded, props, specs, self.result, domain, model_sha256, timeout)


def gate_model(
    loaded: LoadedModel,
    exported: onnx.ModelProto,
    input_spec: TensorSpec,
    props: Sequence[Property],
    specs: Sequence[Path],
    timeout: float,
    domain: Box | None,
    gate_layer: str | int = "auto",
) -> Gating:
    """Verify, gate, prove, measure fidelity: the gated model and its report entries."""
    result = insert_gates(loaded.path, exported, specs, props, timeout, domain, gate_layer)
    gated = shipped_model(exported, result)
    report = {
        "verdict_original": [
            {"source": p.source, **v.original, "core": v.core, "gated": v.gated}
            for p, v in zip(props, result.verdicts, strict=True)
        ],
        "gates": [gate.to_json() for gate in result.gates],
        "hidden_gate": None if result.hidden is None else result.hidden.to_json(),
        "gate_placement": result.placement,
        "gate_proof": {
            "cases": [proof.to_json() for proof in result.proofs],
            "seconds": result.seconds,
        },
        "fidelity": fidelity(loaded.path, gated, input_spec, props),
    }
    return Gating(gated, result, report)
