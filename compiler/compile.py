"""``compile_model``: the whole compile, as the CLI and the Python API run it.

load -> import -> property/domain -> pipeline -> export -> check against the
original in onnxruntime -> (with specs) verify, gate and prove
(``certificate.gate_model``) -> write ``model.onnx``, ``report.json`` (and
``certificate.json``) atomically.  The check against the original compares
the UNGATED network: gates change outputs on purpose.  ``options.require``
says what the gate step must achieve (``compiler/guarantee.py``); a ``Trace``
records the seconds of every stage and what is known so far, for the report
of a compile that fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from relugate import __version__
from relugate.compiler.atomic import atomic_directory, check_target, write_json
from relugate.compiler.backends.tvm import Lowered, lower
from relugate.compiler.bundle import POLICIES, write_bundle
from relugate.compiler.domain import Box
from relugate.compiler.errors import BadSpec, EquivalenceError, ProofFailed
from relugate.compiler.exporter import to_onnx
from relugate.compiler.float_guard import FloatGuard
from relugate.compiler.frontend import LoadedModel, load_model
from relugate.compiler.guarantee import (
    enforce_proof,
    guarantee_json,
    original_verdicts,
    proof_failure,
    resolve_require,
)
from relugate.compiler.importer import import_network
from relugate.compiler.instruments import DumpIR, VerifyEach, default_box
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_batch
from relugate.compiler.pipeline import Instrument, Pipeline, PipelineResult, default_passes
from relugate.compiler.regions_ship import REGIONS_FILE, read_regions_for
from relugate.compiler.spec import Property, parse_input_box, read_vnnlib
from relugate.passes.base import PassContext

if TYPE_CHECKING:
    from relugate.compiler.certificate import Gating

CHECK_SAMPLES = 64


@dataclass
class CompileOptions:
    out_dir: Path
    overwrite: bool = False
    dump_ir: Path | None = None
    verify_each: bool = False
    verify_samples: int = 256
    check_samples: int = CHECK_SAMPLES
    gates: bool = True  # with specs: verify, insert proved output gates, write certificate.json
    gate_timeout: float = 60.0  # verification budget per property (seconds)
    gate_layer: str | int = "auto"  # output | hidden | N | auto (insert_gates.parse_gate_layer)
    pass_options: dict[str, Any] = field(default_factory=dict)  # PassContext.options
    target: str | None = None  # llvm | aarch64 | cuda: also build the library and manifest
    mcpu: str | None = None  # CPU the library is built for (None: this host's; aarch64: generic)
    batch: int | None = None  # fixed batch size for the library (None: any batch)
    tune_seconds: float = 0.0  # MetaSchedule budget (needs batch and tuning_db)
    tuning_db: Path | None = None
    policy: str = "reject"  # out-of-domain inputs at runtime: reject | clamp | flag
    regions: Path | None = None  # regions.json from `relugate characterize`, shipped in the bundle
    require: str | None = None  # proof | repair | none (None: repair, or none without gates)
    on_step: Callable[[str], None] | None = field(default=None, repr=False)


@dataclass
class CompileResult:
    network: Network
    report: dict[str, Any]
    out_dir: Path


def load_properties(paths: Sequence[Path], net: Network) -> list[Property]:
    props = [read_vnnlib(p) for p in paths]
    for prop in props:
        if prop.n_inputs != net.input.size or prop.n_outputs != net.output.size:
            missing = ""
            if prop.n_outputs > net.output.size:
                missing = f" (output Y_{prop.n_outputs - 1} does not exist in the model)"
            raise BadSpec(
                f"{prop.source}: the spec has {prop.n_inputs} inputs and {prop.n_outputs} outputs; "
                f"the model has {net.input.size} inputs and {net.output.size} outputs{missing}"
            )
    return props


def resolve_domain(props: Sequence[Property], input_box: Sequence[str], net: Network) -> Box | None:
    """The input domain: hull of the specs' boxes, or the --input-box given."""
    if props and input_box:
        raise BadSpec("give either --spec or --input-box, not both")
    if input_box:
        box = parse_input_box(input_box, n_inputs=net.input.size)
        if box.dim != net.input.size:
            raise BadSpec(
                f"--input-box gives {box.dim} intervals; the model has {net.input.size} inputs"
            )
        return box
    if not props:
        return None
    lo = np.min([p.domain().lo for p in props], axis=0)
    hi = np.max([p.domain().hi for p in props], axis=0)
    return Box(lo, hi)


class Trace:
    """Where a compile is and what it has found so far: seconds per stage, and the report
    entries known at each point, so that the report of a failed compile says where it
    stopped and what it had learned (``compiler/api.py``)."""

    def __init__(self) -> None:
        self.stage = "start"
        self.stages: dict[str, float] = {}
        self.facts: dict[str, Any] = {}
        self._started = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.stage = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - start, 6)

    def total(self) -> float:
        return round(time.perf_counter() - self._started, 6)

    def timings(self) -> dict[str, Any]:
        passes = [(p["name"], p["seconds"]) for p in self.facts.get("passes", [])]
        return {"stages": dict(self.stages), "passes": dict(passes), "total": self.total()}


def compile_model(
    model: str | Path,
    options: CompileOptions,
    specs: Sequence[str | Path] = (),
    input_box: Sequence[str] = (),
    trace: Trace | None = None,
) -> CompileResult:
    trace = trace if trace is not None else Trace()
    require = resolve_require(options.require, options.gates)
    with trace.step("output"):
        check_target(options.out_dir, options.overwrite)
    with trace.step("load"):
        loaded = load_model(model)
        net = import_network(loaded)
        trace.facts["before"] = net.stats()
    with trace.step("spec"):
        props = load_properties([Path(s) for s in specs], net)
        domain = resolve_domain(props, input_box, net)
    instruments: list[Instrument] = []
    verifier = VerifyEach(domain, options.verify_samples) if options.verify_each else None
    if verifier is not None:
        instruments.append(verifier)
    if options.dump_ir is not None:
        instruments.append(DumpIR(options.dump_ir))
    guard = FloatGuard(str(loaded.path), net, domain or default_box(net), options.check_samples)
    pipeline = Pipeline(default_passes(), instruments, options.on_step, guard)
    with trace.step("passes"):
        result = pipeline.run(net, PassContext(domain=domain, options=options.pass_options))
        trace.facts["after"] = result.network.stats()
        trace.facts["passes"] = [step.to_json() for step in result.steps]
    with trace.step("check"):
        exported = to_onnx(result.network)
        check = check_against_original(guard, net, exported)
        trace.facts["check"] = check
    with trace.step("gates"):
        gating, guarantee = _gate_as_required(
            loaded, exported, net, props, specs, options, domain, require, trace
        )
    shipped = exported if gating is None else gating.model
    report = build_report(loaded, net, result, props, domain, check, verifier)
    if gating is not None:
        report.update(gating.report)
    report["guarantee"] = guarantee
    data = shipped.SerializeToString()
    cert = None
    if gating is not None:
        paths = [Path(s) for s in specs]
        cert = gating.certificate(
            loaded, props, paths, domain, sha256(data).hexdigest(), options.gate_timeout
        )
    with trace.step("library"):
        lowered = _lower(shipped, options)
    if lowered is not None:
        report["backend"] = _backend_json(lowered)
    report["seconds"] = round(trace.total(), 4)
    report["timings"] = trace.timings()
    regions = None if options.regions is None else read_regions_for(options.regions, loaded)
    if regions is not None:
        report["regions"] = regions[1]
    with trace.step("write"), atomic_directory(options.out_dir, options.overwrite) as tmp:
        if regions is not None:
            (tmp / REGIONS_FILE).write_bytes(regions[0])
        write_json(tmp / "report.json", report)
        if lowered is not None:
            write_bundle(tmp, lowered, shipped, cert, domain, options.policy)
        else:
            (tmp / "model.onnx").write_bytes(data)
            if cert is not None:
                write_json(tmp / "certificate.json", cert)
    trace.stage = "done"
    return CompileResult(result.network, report, options.out_dir)


def _gate_as_required(
    loaded: LoadedModel,
    exported: onnx.ModelProto,
    net: Network,
    props: Sequence[Property],
    specs: Sequence[str | Path],
    options: CompileOptions,
    domain: Box | None,
    require: str,
    trace: Trace,
) -> tuple[Gating | None, dict[str, Any]]:
    """The gate step under ``require`` (``compiler/guarantee.py``): the gating (None when
    there is none, or, with ``none``, when no gate could be proved) and the guarantee."""
    try:
        gating = _gate(loaded, exported, net, props, specs, options, domain)
    except ProofFailed as exc:
        if require != "none":
            trace.facts["guarantee"] = guarantee_json(require, props, None, exc)
            raise proof_failure(require, exc) from exc
        verdicts = original_verdicts(loaded.path, [Path(s) for s in specs], options.gate_timeout)
        guarantee = guarantee_json(require, props, None, exc, verdicts)
        trace.facts["guarantee"] = guarantee
        return None, guarantee
    guarantee = guarantee_json(require, props, gating)
    trace.facts["guarantee"] = guarantee
    if gating is not None:
        trace.facts.update(gating.report)  # verdicts, gates, fidelity
        if require == "proof":
            enforce_proof(gating)
    return gating, guarantee


def _lower(model: onnx.ModelProto, options: CompileOptions) -> Lowered | None:
    """The TVM library for ``options.target`` (built before anything is written)."""
    if options.target is None:
        return None
    if options.policy not in POLICIES:
        raise BadSpec(f"--policy must be one of {', '.join(POLICIES)}, not {options.policy!r}")
    return lower(
        model,
        options.target,
        options.batch,
        options.tune_seconds,
        options.tuning_db,
        mcpu=options.mcpu,
    )


def _backend_json(lowered: Lowered) -> dict[str, Any]:
    return {
        "target": lowered.target.to_json(),
        "batch": lowered.batch,
        "compile_seconds": lowered.compile_seconds,
        "tuning": lowered.tuning.to_json() if lowered.tuning else None,
    }


def _gate(
    loaded: LoadedModel,
    exported: onnx.ModelProto,
    net: Network,
    props: Sequence[Property],
    specs: Sequence[str | Path],
    options: CompileOptions,
    domain: Box | None,
) -> Gating | None:
    """With specs (and gates on): verdicts, proved output gates, fidelity."""
    if not props or not options.gates:
        return None
    from relugate.compiler.certificate import gate_model  # imports verify, which imports us

    if options.on_step is not None:
        options.on_step("insert_gates (verify, gate, prove)")
    spec_in = TensorSpec(net.input.name, net.input.shape, net.input.has_batch)
    paths = [Path(s) for s in specs]
    return gate_model(
        loaded, exported, spec_in, props, paths, options.gate_timeout, domain, options.gate_layer
    )


def check_against_original(
    guard: FloatGuard, net: Network, exported: onnx.ModelProto
) -> dict[str, Any]:
    """Run the compiled model in onnxruntime on the guard's inputs from the domain and
    compare with the original's outputs there (computed once, by the guard); fail if
    they differ."""
    points, original = guard.reference()
    out_spec = TensorSpec(net.input.name, net.input.shape, net.input.has_batch)
    compiled = run_batch(exported, out_spec, points)
    worst = float(mismatch(original, compiled).max())
    if worst > TOLERANCE:
        raise EquivalenceError(
            f"internal error: the compiled model differs from the original by {worst:.3g} "
            f"(relative) on the domain; tolerance {TOLERANCE}. Nothing was written."
        )
    return {"samples": len(points), "max_relative_error": worst, "tolerance": TOLERANCE}


def build_report(
    loaded: LoadedModel,
    original: Network,
    result: PipelineResult,
    props: Sequence[Property],
    domain: Box | None,
    check: dict[str, Any],
    verifier: VerifyEach | None,
) -> dict[str, Any]:
    return {
        "relugate_version": __version__,
        "model": {
            "path": str(loaded.path),
            "sha256": loaded.sha256,
            "opset": loaded.original_opset,
            "notes": list(loaded.notes),
        },
        "input": _spec_json(original.input),
        "output": _spec_json(original.output),
        "domain": None if domain is None else domain.to_json(),
        "domain_is_hull_of_boxes": sum(len(p.cases) for p in props) if props else None,
        "properties": [{"source": p.source, "cases": len(p.cases)} for p in props],
        "before": original.stats(),
        "after": result.network.stats(),
        "passes": [step.to_json() for step in result.steps],
        "check": check,
        "verify_each": None if verifier is None else verifier.max_error,
        "certificate": [entry.to_json() for entry in result.certificate],
    }


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "has_batch": spec.has_batch}
