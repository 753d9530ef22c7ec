"""``relugate build``: compile every model of a project config, one combined report.

Each entry (``compiler/config.py``) is compiled as ``relugate compile`` would
(``api.run_compile``); a failing entry does not stop the others.  The combined
report (format ``relugate-build-report/1``, schema in ``report_schema.json``)
holds each entry's pipeline report, and its exit code is the worst (largest)
of the entries' codes: 0 only when every model compiled with its guarantee.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relugate import __version__
from relugate.compiler.api import CompileOutcome, run_compile, write_report
from relugate.compiler.config import Entry, Project, find_config, load_config

FORMAT = "relugate-build-report/1"


@dataclass
class BuildOutcome:
    exit_code: int
    report: dict[str, Any]
    outcomes: dict[str, CompileOutcome]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def compile_entry(
    entry: Entry, force: bool = False, on_step: Callable[[str], None] | None = None
) -> CompileOutcome:
    options = dict(entry.options)
    options["force"] = force or bool(options.get("force", False))
    return run_compile(
        entry.model,
        list(entry.specs),
        entry.out,
        input_box=list(entry.input_box),
        on_step=on_step,
        **options,
    )


def build_project(
    project: Project,
    only: Sequence[str] = (),
    force: bool = False,
    report: Path | None = None,
    on_entry: Callable[[Entry, CompileOutcome], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> BuildOutcome:
    """Compile the selected entries; write the combined report (``report`` or the config's)."""
    started = time.perf_counter()
    entries = project.select(only)
    outcomes: dict[str, CompileOutcome] = {}
    for entry in entries:
        outcome = compile_entry(entry, force, on_step)
        outcomes[entry.name] = outcome
        if on_entry is not None:
            on_entry(entry, outcome)
    worst = max(o.exit_code for o in outcomes.values())
    combined = {
        "format": FORMAT,
        "relugate_version": __version__,
        "config": str(project.path),
        "exit_code": worst,
        "status": "ok" if worst == 0 else "failed",
        "seconds": round(time.perf_counter() - started, 6),
        "models": [
            {"name": name, "exit_code": o.exit_code, "report": o.report}
            for name, o in outcomes.items()
        ],
    }
    write_report(report or project.report, combined)
    return BuildOutcome(worst, combined, outcomes)


def build(
    config: str | Path | None = None,
    only: Sequence[str] = (),
    force: bool = False,
    report: str | Path | None = None,
) -> BuildOutcome:
    """Python API of ``relugate build``: read the config (found as the command finds it)
    and compile its models."""
    path = find_config(None if config is None else Path(config))
    project = load_config(path)
    return build_project(project, only, force, None if report is None else Path(report))
