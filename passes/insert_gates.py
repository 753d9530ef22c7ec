"""insert_gates: make every property hold on the compiled network, by proof.

Per property, ``verify_model`` runs on the ORIGINAL file (``verdict_original``).
A property that holds there is verified again on the compiled (ungated) core,
the network actually shipped; it then gets no gate, only its proof entry.  Any
other property (violated, unknown, or not re-proved on the core) gets one
output gate per unsafe polytope of each of its cases (``gate_design``).

The output ranges the gates are sized from and proved over are CROWN bounds
of the core on each case's box (hull over a grid of 1,024 pieces when the box
has at most 16 inputs; float32-sound; widened by 1e-6 relative so that an
independent re-run on the same file lands inside them).  The composition of
all gates is then proved with z3 on every case of every property
(``gate_proof``); a case that cannot be proved fails the compile.

Where the gate goes (``gate_layer``): ``output`` as above; ``N`` a clamp of hidden
layer ``N`` (``insert_hidden``; no proof, no bundle); ``hidden`` the hidden layer
whose proved region keeps most original-safe samples, output gates where none
proves; ``auto`` (the default) output gates, and a hidden gate when no output
gate can be built or proved for some polytope (e.g. rows of mixed signs).  Output
gates come first because they measured better: on the 7 ACAS Xu prop 2 instances
they keep 100% of the original-safe samples, the best hidden box 40-99.9%
(``benchmarks/results/gates_hidden.md``), and their latency overhead is lower
(onnxruntime, batch 1024, median 1.08 against 1.15-1.55).

This step works on ONNX files rather than on the ``Network`` chain because the
gates sit after the network's output or inside it (``compiler/gates_onnx``,
``compiler/hidden_onnx``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.domain import Box
from relugate.compiler.errors import BadSpec, ProofFailed
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.spec import Property
from relugate.compiler.verify import VerifyResult, verify_model
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.gate_design import GateSpec, design_gates
from relugate.passes.analysis.gate_proof import CaseProof, prove_case
from relugate.passes.analysis.hidden_gate import HiddenGate
from relugate.passes.analysis.steps import Step, steps_of

SPLIT_PIECES = 1024
"""Boxes with few inputs are cut into this many pieces for their output range: on ACAS
Xu prop 2 one CROWN bound spans +-1,200 where the outputs stay within +-0.03; 1,024
pieces give +-0.17 in 4 s (the gates' margin delta scales with the range)."""
SPLIT_MAX_DIM = 16
SPLIT_BATCH = 256
RANGE_SLACK = 1e-6
"""Output ranges are widened by this, relative to ``max(1, |bound|)``."""

Range = tuple[np.ndarray, np.ndarray]
GATE_LAYERS = ("auto", "output", "hidden")
"""``gate_layer`` values besides a hidden layer's number."""


@dataclass
class PropertyVerdict:
    original: dict[str, Any]
    core: dict[str, Any] | None = None

    @property
    def gated(self) -> bool:
        return self.original["verdict"] != "holds" or (self.core or {}).get("verdict") != "holds"

    def to_json(self) -> dict[str, Any]:
        return {"original": self.original, "core": self.core, "gated": self.gated}


@dataclass
class GateResult:
    verdicts: list[PropertyVerdict]
    ranges: list[list[Range]]
    gates: list[GateSpec]
    proofs: list[CaseProof]
    seconds: dict[str, float] = field(default_factory=dict)
    hidden: HiddenGate | None = None
    placement: dict[str, Any] = field(default_factory=dict)  # gate_layer asked, used, fallback

    @property
    def gated(self) -> list[bool]:
        return [v.gated for v in self.verdicts]


def _verdict_json(result: VerifyResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "verdict": result.verdict,
        "method": result.method,
        "seconds": round(result.seconds, 3),
    }
    if result.counterexample is not None:
        data["counterexample"] = result.counterexample
    return data


def widen(lo: np.ndarray, hi: np.ndarray) -> Range:
    """Bounds pushed outwards by ``RANGE_SLACK * max(1, |bound|)``."""
    return (
        lo - RANGE_SLACK * np.maximum(1.0, np.abs(lo)),
        hi + RANGE_SLACK * np.maximum(1.0, np.abs(hi)),
    )


def grid(box: Box, pieces: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``pieces`` sub-boxes covering ``box``: the widest dimensions (per part)
    halved in turn."""
    counts = np.ones(box.dim, dtype=int)
    width = box.width
    while counts.prod() * 2 <= pieces and width.max() > 0:
        counts[int(np.argmax(width / counts))] *= 2
    split = np.flatnonzero(counts > 1)  # at most log2(pieces) dimensions
    lo = np.repeat(box.lo[None], int(counts.prod()), axis=0)
    hi = np.repeat(box.hi[None], len(lo), axis=0)
    if split.size == 0:
        return lo, hi
    index = np.unravel_index(np.arange(len(lo)), tuple(counts[split]))
    for i, part in zip(split, index, strict=True):
        edges = np.linspace(box.lo[i], box.hi[i], counts[i] + 1)  # ends exact
        lo[:, i], hi[:, i] = edges[part], edges[part + 1]
    return lo, hi


def case_range(steps: list[Step], box: Box) -> Range:
    """Hull of CROWN output bounds over a grid of the box (one box when it is wide)."""
    pieces = SPLIT_PIECES if box.dim <= SPLIT_MAX_DIM else 1
    lo, hi = grid(box, pieces)
    y_lo, y_hi = [], []
    for start in range(0, len(lo), SPLIT_BATCH):
        bounds = crown_bounds(
            steps, lo[start : start + SPLIT_BATCH], hi[start : start + SPLIT_BATCH]
        )
        out_lo, out_hi = bounds.output()
        y_lo.append(out_lo.min(axis=0))
        y_hi.append(out_hi.max(axis=0))
    return np.min(y_lo, axis=0), np.max(y_hi, axis=0)


def output_ranges(
    core_path: Path, props: Sequence[Property], slack: bool = True
) -> list[list[Range]]:
    """Bounds on the core's output over every case box (widened with ``slack``)."""
    steps = steps_of(import_network(load_model(core_path)))
    ranges = []
    for prop in props:
        per_case = [case_range(steps, case.box) for case in prop.cases]
        ranges.append([widen(lo, hi) if slack else (lo, hi) for lo, hi in per_case])
    return ranges


def decide(
    original: Path, core_path: Path, specs: Sequence[Path], timeout: float
) -> list[PropertyVerdict]:
    """Verdicts on the original, and on the core for the properties that hold."""
    verdicts = []
    for spec in specs:
        first = PropertyVerdict(_verdict_json(verify_model(original, [spec], timeout=timeout)))
        if first.original["verdict"] == "holds":
            first.core = _verdict_json(verify_model(core_path, [spec], timeout=timeout))
        verdicts.append(first)
    return verdicts


def prove_all(
    props: Sequence[Property],
    gated: Sequence[bool],
    ranges: Sequence[Sequence[Range]],
    gates: Sequence[GateSpec],
) -> list[CaseProof]:
    """Prove every case of every property with all gates in place; fail on the first gap."""
    proofs = []
    for p, prop in enumerate(props):
        for c, case in enumerate(prop.cases):
            proof = prove_case(gates, (p, c), case, ranges[p][c], premise=not gated[p])
            if not proof.proved:
                raise ProofFailed(_failure(prop, c, proof))
            proofs.append(proof)
    return proofs


def _failure(prop: Property, c: int, proof: CaseProof) -> str:
    where = f"{prop.source} (case {c + 1})"
    if proof.status == "sat":
        y = ", ".join(f"{v:.6g}" for v in proof.counterexample or ())
        return (
            f"the gated network cannot be proved safe for {where}: z3 finds network outputs "
            f"[{y}] that the gates leave in (or move into) an unsafe set; are the unsafe sets "
            "contradictory (covering every output)? Nothing was written."
        )
    return (
        f"the proof of the gates for {where} did not finish (z3: {proof.status}); nothing written"
    )


def parse_gate_layer(value: str | int) -> str | int:
    """``auto``, ``output``, ``hidden`` or a hidden layer's number (from 0)."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    if value not in GATE_LAYERS:
        raise BadSpec(
            f"--gate-layer must be {', '.join(GATE_LAYERS)} or a hidden layer number, not {value!r}"
        )
    return str(value)


def _output_gates(
    props: Sequence[Property],
    gated: list[bool],
    ranges: list[list[Range]],
    domain: Box | None,
) -> tuple[list[GateSpec], list[CaseProof]]:
    gates = design_gates(list(props), gated, [list(r) for r in ranges], domain)
    return gates, prove_all(props, gated, ranges, gates)


Placed = tuple[list[GateSpec], list[CaseProof], HiddenGate | None, str | None]
"""Output gates and their proofs, or a hidden gate; and why the first choice fell back."""


def _place(
    layer: str | int,
    core_path: Path,
    core: onnx.ModelProto,
    props: Sequence[Property],
    gated: list[bool],
    ranges: list[list[Range]],
    domain: Box | None,
    timeout: float,
) -> Placed:
    """Output gates or one hidden gate, as ``layer`` says (see the module doc)."""
    from relugate.passes.insert_hidden import design_hidden  # imports this module

    def output() -> Placed:
        return (*_output_gates(props, gated, ranges, domain), None, None)

    def hidden(wanted: int | None = None) -> Placed:
        return [], [], design_hidden(core_path, core, props, wanted, timeout), None

    if layer == "output" or not any(gated):
        return output()
    if isinstance(layer, int):
        return hidden(layer)
    first, second = (output, hidden) if layer == "auto" else (hidden, output)
    try:
        return first()
    except ProofFailed as refused:
        try:
            placed = second()
        except ProofFailed as exc:
            raise ProofFailed(f"{refused}; and {exc}") from exc
        return (*placed[:3], str(refused))


def insert_gates(
    original: Path,
    core: onnx.ModelProto,
    specs: Sequence[Path],
    props: Sequence[Property],
    timeout: float = 60.0,
    domain: Box | None = None,
    gate_layer: str | int = "auto",
) -> GateResult:
    """Verdicts, gates and their proof for the compiled ``core`` (the exported ONNX)."""
    layer = parse_gate_layer(gate_layer)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="relugate-gates-") as tmp:
        core_path = Path(tmp) / "core.onnx"
        onnx.save(core, str(core_path))
        start = time.perf_counter()
        verdicts = decide(original, core_path, specs, timeout)
        seconds["verify"] = time.perf_counter() - start
        start = time.perf_counter()
        ranges = output_ranges(core_path, props)
        seconds["ranges"] = time.perf_counter() - start
        gated = [v.gated for v in verdicts]
        start = time.perf_counter()
        gates, proofs, hidden, fallback = _place(
            layer, core_path, core, props, gated, ranges, domain, timeout
        )
        seconds["proof"] = time.perf_counter() - start
    rounded = {k: round(v, 4) for k, v in seconds.items()}
    placement: dict[str, Any] = {
        "requested": layer,
        "used": "output" if hidden is None else "hidden",
        "fallback_from": fallback,  # why the first choice was not used (or None)
    }
    return GateResult(verdicts, ranges, gates, proofs, rounded, hidden, placement)
