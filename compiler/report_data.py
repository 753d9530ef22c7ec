"""The numbers ``relugate report`` shows, gathered from a bundle.

A bundle's ``report.json`` gives the passes, counts, verdicts, gates and
fidelity; ``certificate.json`` (gated compiles) the gates and their proofs.
Two things are computed here: per-layer ReLU counts (the final network in
``model.onnx``, gates stripped, against the original model when it is still
at its recorded path with its recorded sha256, else against the units
``stable_relu`` started from), and the pre-activation bound widths of every
ReLU layer of the final network on the bundle's domain (interval and CROWN,
``passes/analysis``).  Gate firing rates come from a runtime ``stats()``
snapshot (``firing_from_stats``) or from running the bundle on uniform
samples of the domain (``sample_firing``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relugate.compiler.errors import BadInput, BundleError, RelugateError

BOUND_METHODS = ("crown", "interval", "none")
PASS_KEYS = ("name", "changed", "seconds", "relus_before", "relus_after")
COUNT_KEYS = ("layers", "relus", "params", "flops")


@dataclass(frozen=True)
class ReluLayer:
    name: str
    before: int
    after: int  # 0: the layer's ReLU was removed (or all its units)
    # stable_relu's account of the layer (None where it has none): units it proved
    # inactive and removed, and, in its last round, units proved active and unstable ones
    inactive_removed: int | None = None
    active: int | None = None
    unstable: int | None = None


@dataclass(frozen=True)
class LayerWidths:
    """Pre-activation bound widths ``hi - lo`` of one ReLU layer of the final network."""

    name: str
    interval: np.ndarray
    crown: np.ndarray | None
    unstable_interval: int  # lo < 0 < hi
    unstable_crown: int | None

    @property
    def units(self) -> int:
        return int(self.interval.size)


@dataclass(frozen=True)
class Firing:
    """Gate firings over ``inputs`` runtime inputs (rows)."""

    source: str
    inputs: int
    gate_fired: int
    by_output: list[int]
    out_of_domain: int
    rejected: int
    clamped: int
    flagged: int

    @property
    def rate(self) -> float:
        return self.gate_fired / self.inputs if self.inputs else 0.0

    def output_rate(self, k: int) -> float:
        if not self.inputs or k >= len(self.by_output):
            return 0.0
        return self.by_output[k] / self.inputs


@dataclass
class BundleReport:
    path: Path
    report: dict[str, Any]
    certificate: dict[str, Any] | None
    relu_layers: list[ReluLayer]
    relu_source: str
    widths: list[LayerWidths] = field(default_factory=list)
    widths_note: str = ""
    bounds_method: str = "crown"
    firing: Firing | None = None

    @property
    def passes(self) -> list[dict[str, Any]]:
        return list(self.report["passes"])

    @property
    def gates(self) -> list[dict[str, Any]]:
        if self.certificate is not None:
            return list(self.certificate.get("gates", []))
        return list(self.report.get("gates", []))

    @property
    def proof_cases(self) -> list[dict[str, Any]]:
        source = (
            self.certificate.get("proof") if self.certificate else self.report.get("gate_proof")
        )
        return list((source or {}).get("cases", []))

    @property
    def fidelity(self) -> list[dict[str, Any]]:
        return list(self.report.get("fidelity", []))

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return list(self.report.get("verdict_original", []))


# -- reading ---------------------------------------------------------------------------


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise BundleError(f"{path.parent}: not a relugate bundle ({path.name} missing)")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from None
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _check_report(report: dict[str, Any], path: Path) -> None:
    """The keys the report page reads, with their types; a clear error for anything else."""
    for key in ("before", "after"):
        counts = report.get(key)
        if not isinstance(counts, dict) or not all(
            isinstance(counts.get(k), int) for k in COUNT_KEYS
        ):
            raise BundleError(f"{path}: {key!r} must hold integer counts {list(COUNT_KEYS)}")
    passes = report.get("passes")
    if not isinstance(passes, list):
        raise BundleError(f"{path}: 'passes' must be a list of pass records")
    for i, step in enumerate(passes):
        if not isinstance(step, dict) or any(k not in step for k in PASS_KEYS):
            raise BundleError(f"{path}: pass record {i} lacks one of {list(PASS_KEYS)}")
    domain = report.get("domain")
    if domain is not None and not (
        isinstance(domain, dict)
        and isinstance(domain.get("lo"), list)
        and isinstance(domain.get("hi"), list)
        and len(domain["lo"]) == len(domain["hi"])
    ):
        raise BundleError(f"{path}: 'domain' must be null or {{'lo': [...], 'hi': [...]}}")
    for key in ("gates", "fidelity", "verdict_original"):
        if key in report and not isinstance(report[key], list):
            raise BundleError(f"{path}: {key!r} must be a list")


def read_bundle(bundle: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``report.json`` (checked) and ``certificate.json`` (None when the bundle has none)."""
    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"{bundle}: no such folder")
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a folder (give the bundle folder written by compile)")
    report = _read_json(bundle / "report.json", required=True)
    assert report is not None
    _check_report(report, bundle / "report.json")
    cert = _read_json(bundle / "certificate.json", required=False)
    if cert is not None and not isinstance(cert.get("gates", []), list):
        raise BundleError(f"{bundle}/certificate.json: 'gates' must be a list")
    return report, cert


def _core_network(bundle: Path) -> Any:
    """The final network of ``model.onnx`` with any gates stripped, as a ``Network``."""
    import onnx

    from relugate.compiler.frontend import load_model
    from relugate.compiler.gates_onnx import strip_gates
    from relugate.compiler.importer import import_network

    path = bundle / "model.onnx"
    if not path.is_file():
        raise BundleError(f"{bundle}: not a relugate bundle (model.onnx missing)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and others
        raise BundleError(f"{path}: not a readable ONNX file ({exc})") from None
    core = strip_gates(model)
    with tempfile.TemporaryDirectory(prefix="relugate-report-") as tmp:
        core_path = Path(tmp) / "core.onnx"
        onnx.save(core, str(core_path))
        try:
            return import_network(load_model(core_path))
        except RelugateError as exc:
            raise BundleError(f"{path}: cannot import the final network ({exc})") from None


def _relu_sizes(net: Any) -> dict[str, int]:
    from relugate.passes.analysis.steps import ReluStep, steps_of

    return {s.layer.name: int(s.n) for s in steps_of(net) if isinstance(s, ReluStep)}


def _original_sizes(report: dict[str, Any], cert: dict[str, Any] | None) -> dict[str, int] | None:
    """ReLU layer sizes of the original model, when it is still where the compile read it
    and unchanged (same sha256); None otherwise."""
    from relugate.compiler.frontend import load_model
    from relugate.compiler.importer import import_network

    model = report.get("model") or {}
    digest = model.get("sha256")
    paths = [(cert or {}).get("input_model", {}).get("path"), model.get("path")]
    for p in paths:
        if not isinstance(p, str) or not digest or not Path(p).is_file():
            continue
        if hashlib.sha256(Path(p).read_bytes()).hexdigest() != digest:
            continue
        try:
            return _relu_sizes(import_network(load_model(p)))
        except RelugateError:
            return None
    return None


def relu_layers(
    report: dict[str, Any], cert: dict[str, Any] | None, final: dict[str, int]
) -> tuple[list[ReluLayer], str]:
    """Per ReLU layer: units before and after the pipeline, and where 'before' came from."""
    rows: dict[str, dict[str, Any]] = {}
    for step in report["passes"]:
        if step["name"] == "stable_relu":
            layers = (step.get("details") or {}).get("layers") or {}
            if isinstance(layers, dict):
                rows = {str(k): v for k, v in layers.items() if isinstance(v, dict)}
    before = _original_sizes(report, cert)
    source = "original model"
    if before is None:
        source = "stable_relu's input (original model not found)"
        units = {n: row["units"] for n, row in rows.items() if isinstance(row.get("units"), int)}
        before = {**{n: u for n, u in final.items() if n not in units}, **units}
    names = list(before) + [n for n in final if n not in before]

    def count(name: str, key: str) -> int | None:
        value = rows.get(name, {}).get(key)
        return value if isinstance(value, int) else None

    return [
        ReluLayer(
            n,
            before.get(n, 0),
            final.get(n, 0),
            count(n, "inactive_removed"),
            count(n, "active"),
            count(n, "unstable"),
        )
        for n in names
    ], source


# -- bounds ----------------------------------------------------------------------------


def bound_widths(net: Any, domain: dict[str, Any], method: str) -> list[LayerWidths]:
    """Widths of every ReLU layer's pre-activation bounds on ``domain`` (one box)."""
    from relugate.passes.analysis.crown import crown_bounds
    from relugate.passes.analysis.interval import interval_bounds
    from relugate.passes.analysis.steps import ReluStep, steps_of

    steps = steps_of(net)
    lo = np.asarray(domain["lo"], dtype=np.float64)
    hi = np.asarray(domain["hi"], dtype=np.float64)
    if lo.size != net.input.size:
        raise BundleError(
            f"the domain has {lo.size} inputs; the bundle's network has {net.input.size}"
        )
    interval = interval_bounds(steps, lo, hi)
    crown = crown_bounds(steps, lo, hi) if method == "crown" else None
    rows = []
    for k, step in enumerate(steps):
        if not isinstance(step, ReluStep):
            continue
        i_lo, i_hi = interval.lo[k][0], interval.hi[k][0]
        c_w, c_unstable = None, None
        if crown is not None:
            c_lo, c_hi = crown.lo[k][0], crown.hi[k][0]
            c_w, c_unstable = c_hi - c_lo, int(np.sum((c_lo < 0) & (c_hi > 0)))
        unstable = int(np.sum((i_lo < 0) & (i_hi > 0)))
        rows.append(LayerWidths(step.layer.name, i_hi - i_lo, c_w, unstable, c_unstable))
    return rows


# -- firing rates ----------------------------------------------------------------------

_STATS_INTS = ("inputs", "gate_fired")


def firing_from_stats(stats: object, source: str, n_outputs: int | None = None) -> Firing:
    """A ``Firing`` from the JSON of ``relugate.runtime``'s ``Model.stats()``, or of the
    HTTP endpoint's ``GET /stats`` (``{"model": model.stats(), "server": ...}``)."""
    if isinstance(stats, dict) and "inputs" not in stats and isinstance(stats.get("model"), dict):
        stats = stats["model"]
    if not isinstance(stats, dict):
        raise BadInput(f"{source}: expected the JSON object of model.stats()")
    for key in _STATS_INTS:
        value = stats.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadInput(f"{source}: {key!r} must be a non-negative integer (model.stats())")
    by_output = stats.get("gate_fired_by_output", [])
    if not isinstance(by_output, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in by_output
    ):
        raise BadInput(f"{source}: 'gate_fired_by_output' must be a list of counts")
    if n_outputs is not None and by_output and len(by_output) != n_outputs:
        raise BadInput(
            f"{source}: 'gate_fired_by_output' has {len(by_output)} entries; "
            f"the bundle has {n_outputs} outputs (stats of another model?)"
        )
    if stats["gate_fired"] > stats["inputs"] or any(v > stats["inputs"] for v in by_output):
        raise BadInput(f"{source}: more gate firings than inputs")

    def count(key: str) -> int:
        value = stats.get(key, 0)
        return value if isinstance(value, int) and value >= 0 else 0

    return Firing(
        source,
        stats["inputs"],
        stats["gate_fired"],
        list(by_output),
        count("out_of_domain"),
        count("rejected"),
        count("clamped"),
        count("flagged"),
    )


def read_stats(path: Path, n_outputs: int | None = None) -> Firing:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read ({exc})") from None
    except ValueError as exc:
        raise BadInput(f"{path}: not valid JSON ({exc})") from None
    return firing_from_stats(data, str(path), n_outputs)


def n_outputs(report: dict[str, Any]) -> int | None:
    """Output elements per sample, from report.json's ``output`` (None when it says nothing)."""
    out = report.get("output")
    if not isinstance(out, dict) or not isinstance(out.get("shape"), list):
        return None
    shape = list(out["shape"])
    if out.get("has_batch") and shape:
        shape = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def sample_firing(bundle: Path, n: int, seed: int = 0, chunk: int = 4096) -> Firing:
    """Run the bundle's runtime on ``n`` uniform samples of its domain; its counters."""
    import relugate.runtime

    if not (Path(bundle) / "manifest.json").is_file():
        raise BundleError(
            f"{bundle}: no library to run for --sample (compiled without --target, or with "
            "--target none); give --stats from a deployed model instead"
        )
    model = relugate.runtime.load(bundle)
    if model.domain is None:
        raise BundleError(f"{bundle}: the bundle has no domain to sample (compiled without one)")
    lo, hi = (np.asarray(b, dtype=np.float64) for b in model.domain)
    rng = np.random.default_rng(seed)
    model.reset_stats()
    done = 0
    while done < n:
        m = min(chunk, n - done)
        # float32 rounding keeps each sample inside the runtime's float32-widened domain
        x = rng.uniform(lo, hi, size=(m, lo.size)).astype(np.float32)
        model.run(x.reshape(m, *model.sample_shape))
        done += m
    what = f"{n:,} uniform samples of the domain (seed {seed})"
    return firing_from_stats(model.stats(), what)


# -- all together ----------------------------------------------------------------------


def gather(bundle: Path, bounds: str = "crown", firing: Firing | None = None) -> BundleReport:
    """Everything the report shows; ``bounds``: crown (interval too), interval, or none."""
    if bounds not in BOUND_METHODS:
        raise BadInput(f"--bounds must be one of {list(BOUND_METHODS)}, not {bounds!r}")
    bundle = Path(bundle)
    report, cert = read_bundle(bundle)
    net = _core_network(bundle)
    final = _relu_sizes(net)
    layers, source = relu_layers(report, cert, final)
    result = BundleReport(bundle, report, cert, layers, source, bounds_method=bounds)
    result.firing = firing
    domain = report.get("domain")
    if bounds == "none":
        result.widths_note = "bound widths not computed (--bounds none)"
    elif domain is None:
        result.widths_note = "the bundle has no domain: no bounds to compute"
    elif not final:
        result.widths_note = "the final network has no ReLU layer"
    else:
        result.widths = bound_widths(net, domain, bounds)
    return result
