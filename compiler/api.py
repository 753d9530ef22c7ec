"""The Python API: ``relugate.compile(...)`` does what ``relugate compile`` does.

    import relugate
    result = relugate.compile("model.onnx", spec="p.vnnlib", out="build/model", target="none")
    result.ok, result.exit_code, result.verdicts, result.bundle, result.report

Every option of the command is a keyword argument with the same name
(``--gate-timeout`` is ``gate_timeout``, ``--force`` is ``force``).  A compile
that fails on a known error (bad model or spec, a property that cannot be
guaranteed, an output folder that cannot be written) does not raise: the result
carries the exit code the command would give, the error and the report, and
``result.raise_for_status()`` raises the error.  An internal error (a bug) is
raised.  The ``report`` is the pipeline report (``compiler/step_report.py``);
with ``report=PATH`` it is also written there, atomically, whatever the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relugate.compiler.atomic import write_json_atomic
from relugate.compiler.errors import INTERNAL_ERROR_EXIT, BundleError, RelugateError
from relugate.compiler.step_report import pipeline_report

if TYPE_CHECKING:
    from relugate.compiler.verify import VerifyResult

PathLike = str | Path


@dataclass
class CompileOutcome:
    """What one compile gave: its exit code, the pipeline report, the bundle folder."""

    exit_code: int
    report: dict[str, Any]
    bundle: Path | None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def status(self) -> str:
        return str(self.report["status"])

    @property
    def guaranteed(self) -> bool:
        """Whether the ``require`` level was met (False when the compile stopped before)."""
        guarantee = self.report["guarantee"]
        return bool(self.ok and guarantee is not None and guarantee["met"])

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        """Per property: source, verdict on the original, method, gated, status."""
        guarantee = self.report["guarantee"]
        return [] if guarantee is None else list(guarantee["properties"])

    def raise_for_status(self) -> None:
        """Raise the compile's error, if it failed."""
        if self.error is not None:
            raise self.error


def _as_list(value: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [Path(value)]
    return [Path(v) for v in value]


def _request(model: Path, specs: list[Path], out: Path, options: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    return {
        "model": str(model),
        "specs": [str(s) for s in specs],
        "out": str(out),
        **{k: plain(v) for k, v in options.items()},
    }


def run_compile(
    model: PathLike,
    spec: PathLike | Sequence[PathLike] | None = None,
    out: PathLike | None = None,
    *,
    input_box: Sequence[str] | None = None,
    require: str | None = None,
    target: str = "llvm",
    mcpu: str | None = None,
    policy: str = "reject",
    gates: bool = True,
    gate_timeout: float = 60.0,
    gate_layer: str | int = "auto",
    stability: str = "auto",
    maxpool_to_relu: bool = False,
    linear_skip: bool = False,
    batch: int | None = None,
    tune_seconds: float = 0.0,
    tuning_db: PathLike | None = None,
    regions: PathLike | None = None,
    force: bool = False,
    dump_ir: PathLike | None = None,
    verify_each: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> CompileOutcome:
    """One compile; every error, internal ones included, ends in the outcome."""
    from relugate.compiler.compile import CompileOptions, Trace, compile_model

    if out is None:
        raise TypeError("compile() needs out=FOLDER, the bundle to write")
    started = time.perf_counter()
    specs = _as_list(spec)
    request = _request(
        Path(model),
        specs,
        Path(out),
        {
            "input_box": list(input_box or []),
            "require": require,
            "target": target,
            "mcpu": mcpu,
            "policy": policy,
            "gates": gates,
            "gate_timeout": gate_timeout,
            "gate_layer": gate_layer,
            "stability": stability,
            "maxpool_to_relu": maxpool_to_relu,
            "linear_skip": linear_skip,
            "batch": batch,
            "tune_seconds": tune_seconds,
            "regions": None if regions is None else str(regions),
            "force": force,
        },
    )
    trace = Trace()
    options = CompileOptions(
        out_dir=Path(out),
        overwrite=force,
        dump_ir=None if dump_ir is None else Path(dump_ir),
        verify_each=verify_each,
        on_step=on_step,
        gates=gates,
        gate_timeout=gate_timeout,
        gate_layer=gate_layer,
        pass_options={
            "stability": stability,
            "maxpool": "relu" if maxpool_to_relu else "keep",
            "skip": linear_skip,
        },
        target=None if target == "none" else target,
        mcpu=mcpu,
        batch=batch,
        tune_seconds=tune_seconds,
        tuning_db=None if tuning_db is None else Path(tuning_db),
        regions=None if regions is None else Path(regions),
        policy=policy,
        require=require,
    )
    error: BaseException | None = None
    try:
        result = compile_model(
            model, options, specs=specs, input_box=list(input_box or []), trace=trace
        )
        facts, code = result.report, 0
    except RelugateError as exc:
        error, facts, code = exc, trace.facts, exc.exit_code
    except Exception as exc:  # a bug: reported as such, then raised by compile()
        error, facts, code = exc, trace.facts, INTERNAL_ERROR_EXIT
    timings = trace.timings()
    timings["total"] = round(time.perf_counter() - started, 6)
    stage = "done" if code == 0 else trace.stage
    report = pipeline_report(request, code, error, stage, facts, timings, Path(out))
    return CompileOutcome(code, report, Path(out) if code == 0 else None, error)


def write_report(path: PathLike, report: dict[str, Any]) -> None:
    """Write a report atomically; a path that cannot be written is a ``BundleError``."""
    try:
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(path), report)
    except OSError as exc:
        raise BundleError(f"cannot write the report {path}: {exc.strerror or exc}") from exc


def compile(
    model: PathLike,
    spec: PathLike | Sequence[PathLike] | None = None,
    out: PathLike | None = None,
    *,
    report: PathLike | None = None,
    **options: Any,
) -> CompileOutcome:
    """Compile ``model`` for its properties into the bundle folder ``out``, as
    ``relugate compile`` does; keyword options as ``run_compile``."""
    outcome = run_compile(model, spec, out, **options)
    if report is not None:
        write_report(report, outcome.report)
    if outcome.error is not None and not isinstance(outcome.error, RelugateError):
        raise outcome.error
    return outcome


def verify(
    model: PathLike,
    spec: PathLike | Sequence[PathLike],
    *,
    timeout: float = 60.0,
    seed: int = 0,
) -> VerifyResult:
    """Verify the properties in ``spec`` on ``model``, as ``relugate verify`` does: a
    ``VerifyResult`` with ``verdict`` (holds, violated, unknown), ``method``, ``seconds``
    and, when violated, a ``counterexample``.  Bad input raises its ``RelugateError``."""
    from relugate.compiler.verify import verify_model

    return verify_model(model, _as_list(spec), timeout=timeout, seed=seed)
