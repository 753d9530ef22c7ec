"""``verify-batch``: run ``verify_model`` on every instance of a VNN-COMP ``instances.csv``.

Rows are ``onnx, vnnlib, timeout`` with paths relative to the csv's folder.
Instances run in parallel (see ``parallel``: local processes, Dask or Ray).
An instance that raises is recorded as verdict ``error`` with its message;
the batch goes on.  Results go to an output folder, written atomically:
``results.jsonl``, ``results.csv``, ``report.json`` and ``vnncomp/*.txt``
(one VNN-COMP result file per instance, named ``LINE_network_spec.txt``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from relugate.compiler.atomic import atomic_directory, check_target, write_json
from relugate.compiler.errors import BadSpec, ModelError
from relugate.compiler.parallel import parallel_map, resolve_backend

FIELDS = ("line", "network", "spec", "verdict", "method", "seconds", "timeout", "message")
VERDICTS = ("holds", "violated", "unknown", "error")


@dataclass(frozen=True)
class Instance:
    line: int  # in the csv
    network: str  # as written in the csv
    spec: str
    model_path: Path
    spec_path: Path
    timeout: float


@dataclass
class Outcome:
    line: int
    network: str
    spec: str
    verdict: str  # one of VERDICTS
    method: str
    seconds: float
    timeout: float
    message: str = ""
    vnncomp: str = "error\n"

    def row(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in FIELDS}


def read_instances(
    path: Path, timeout_scale: float = 1.0, limit: int | None = None
) -> list[Instance]:
    """The first ``limit`` instances of ``path``, checked: 3 fields, a timeout, files that exist."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSpec(f"{path}: cannot read instances file ({exc})") from exc
    root, found = path.absolute().parent, list[Instance]()
    reader = csv.reader(io.StringIO(text))
    for fields in reader:
        if limit is not None and len(found) >= limit:
            break
        where = f"{path}, line {reader.line_num}"
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != 3:
            raise BadSpec(
                f"{where}: expected 3 fields (onnx, vnnlib, timeout), got {len(fields)}: "
                + repr(",".join(fields))
            )
        network, spec, seconds = (f.strip() for f in fields)
        try:
            timeout = float(seconds) * timeout_scale
        except ValueError:
            raise BadSpec(f"{where}: timeout {seconds!r} is not a number") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise BadSpec(f"{where}: timeout must be positive and finite, not {seconds!r}")
        model, prop = root / network, root / spec
        if not network or not model.is_file():
            raise ModelError(f"{where}: model file {network!r} not found ({model})")
        if not spec or not prop.is_file():
            raise BadSpec(f"{where}: spec file {spec!r} not found ({prop})")
        found.append(
            Instance(reader.line_num, network, spec, model.resolve(), prop.resolve(), timeout)
        )
    if not found:
        raise BadSpec(f"{path}: no instances")
    return found


def run_instance(instance: Instance) -> Outcome:
    """One instance (in a worker); an exception becomes verdict ``error``."""
    started = time.monotonic()
    try:
        from relugate.compiler.verify import verify_model

        result = verify_model(instance.model_path, [instance.spec_path], timeout=instance.timeout)
    except Exception as exc:
        return _error(instance, exc, time.monotonic() - started)
    return Outcome(
        *_names(instance),
        result.verdict,
        result.method,
        round(result.seconds, 4),
        instance.timeout,
        vnncomp=result.vnncomp(),
    )


def run_batch(
    instances: Sequence[Instance],
    backend: str = "local",
    workers: int = 1,
    scheduler: str | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every instance's outcome, in csv order; ``on_done`` sees each as it finishes."""
    outcomes = []
    for instance, result in parallel_map(run_instance, instances, backend, workers, scheduler):
        outcome = result if isinstance(result, Outcome) else _error(instance, result, 0.0)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return sorted(outcomes, key=lambda o: o.line)


def verify_batch(
    csv_path: Path,
    out_dir: Path,
    backend: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    timeout_scale: float = 1.0,
    limit: int | None = None,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> tuple[list[Outcome], dict[str, Any]]:
    """Check everything first, run the batch, write ``out_dir``; the outcomes and report."""
    instances = read_instances(csv_path, timeout_scale, limit)
    backend = resolve_backend(backend, scheduler)
    check_target(out_dir, overwrite)
    if on_start is not None:
        on_start(len(instances))
    workers = max(1, workers or os.cpu_count() or 1)
    started = time.monotonic()
    outcomes = run_batch(instances, backend, workers, scheduler, on_done)
    report = {
        "instances_csv": str(csv_path),
        "backend": backend,
        "workers": workers,
        "scheduler": scheduler,
        "timeout_scale": timeout_scale,
        "wall_seconds": round(time.monotonic() - started, 3),
        "instances": len(outcomes),
        "counts": counts(outcomes),
    }
    write_results(out_dir, outcomes, report, overwrite)
    return outcomes, report


def write_results(
    out_dir: Path, outcomes: Sequence[Outcome], report: dict[str, Any], overwrite: bool = False
) -> None:
    """results.jsonl, results.csv, report.json and one VNN-COMP result file per instance."""
    with atomic_directory(out_dir, overwrite) as tmp:
        rows = [o.row() for o in outcomes]
        (tmp / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        with (tmp / "results.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "vnncomp").mkdir()
        for o in outcomes:
            (tmp / "vnncomp" / result_name(o)).write_text(o.vnncomp)
        write_json(tmp / "report.json", report)


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {v: sum(o.verdict == v for o in outcomes) for v in VERDICTS}


def result_name(o: Outcome) -> str:
    """``0003_net_prop.txt``: the csv line, then the file names without suffixes."""
    return f"{o.line:04d}_{_stem(o.network)}_{_stem(o.spec)}.txt"


def summary_table(outcomes: Sequence[Outcome], report: dict[str, Any]) -> Table:
    title = f"verify-batch: {report['instances']} instances on {escape(report['backend'])}"
    table = Table(title=f"{title}, {report['workers']} workers")
    for col in ("verdict", "instances", "median s", "max s"):
        table.add_column(col, justify="left" if col == "verdict" else "right")
    for verdict, n in counts(outcomes).items():
        times = [o.seconds for o in outcomes if o.verdict == verdict]
        median = f"{statistics.median(times):.2f}" if times else "-"
        table.add_row(verdict, str(n), median, f"{max(times):.2f}" if times else "-")
    total = sum(o.seconds for o in outcomes)
    table.caption = f"wall {report['wall_seconds']:.2f} s; instance times add up to {total:.2f} s"
    return table


def _stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name.split(".")[0])


def _names(instance: Instance) -> tuple[int, str, str]:
    return instance.line, instance.network, instance.spec


def _error(instance: Instance, exc: BaseException, seconds: float) -> Outcome:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Outcome(
        *_names(instance),
        "error",
        type(exc).__name__,
        round(seconds, 4),
        instance.timeout,
        message=message,
    )
