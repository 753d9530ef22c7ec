"""The pipeline report of one compile (``relugate compile --report FILE``, ``relugate.compile``)
and its human summary.

The report is written for a CI/CD step to read: ``status`` and ``exit_code``
first, the ``error`` (kind, message) when the compile failed, what was asked
(``request``), what is guaranteed about each property (``guarantee``), a flat
``summary`` (ReLUs removed, gates, fidelity), ``timings`` (per stage, per pass,
total), the ``bundle`` written and the full compile report (``compile``, the
bundle's ``report.json``).  A failed compile's report holds what was known
when it stopped (``stage``; ``summary`` and ``guarantee`` when reached).
Its JSON Schema ships beside this module (``report_schema.json``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from relugate import __version__

FORMAT = "relugate-compile-report/1"
SCHEMA_FILE = "report_schema.json"


def schema() -> dict[str, Any]:
    """The JSON Schema of the pipeline report (and, under ``$defs``, of the build report)."""
    text = resources.files("relugate.compiler").joinpath(SCHEMA_FILE).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _min(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def summary_json(facts: dict[str, Any]) -> dict[str, Any] | None:
    """Flat figures from a (possibly partial) compile report; None before the model loaded."""
    before = facts.get("before")
    if before is None:
        return None
    after = facts.get("after")
    fidelity = facts.get("fidelity") or []
    check = facts.get("check") or {}
    return {
        "relus_before": before["relus"],
        "relus_after": None if after is None else after["relus"],
        "relus_removed": None if after is None else before["relus"] - after["relus"],
        "params_before": before["params"],
        "params_after": None if after is None else after["params"],
        "flops_before": before["flops"],
        "flops_after": None if after is None else after["flops"],
        "gates": len(facts["gates"]) if "gates" in facts else None,
        "fidelity_same_argmax": _min([f["same_argmax"] for f in fidelity]),
        "fidelity_safe_same_argmax": _min([f["safe_same_argmax"] for f in fidelity]),
        "max_relative_error": check.get("max_relative_error"),
    }


def pipeline_report(
    request: dict[str, Any],
    exit_code: int,
    error: BaseException | None,
    stage: str,
    facts: dict[str, Any],
    timings: dict[str, Any],
    bundle: Path | None,
) -> dict[str, Any]:
    """The report of one compile; ``facts`` is the compile report, or what a failed one knew."""
    complete = error is None and exit_code == 0
    error_json = None
    if error is not None:
        kind = getattr(error, "kind", "internal error")
        error_json = {"kind": kind, "type": type(error).__name__, "message": str(error)}
    return {
        "format": FORMAT,
        "relugate_version": __version__,
        "status": "ok" if complete else "failed",
        "exit_code": exit_code,
        "error": error_json,
        "stage": stage,
        "request": request,
        "guarantee": facts.get("guarantee"),
        "summary": summary_json(facts),
        "timings": timings,
        "bundle": _bundle_json(bundle) if complete and bundle is not None else None,
        "compile": facts if complete else None,
    }


def _bundle_json(path: Path) -> dict[str, Any]:
    files = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return {"path": str(path), "files": files}


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def summary_lines(report: dict[str, Any], name: str | None = None) -> list[str]:
    """A few plain lines for people: verdicts, ReLUs removed, gates, fidelity, time."""
    model = name or Path(report["request"]["model"]).name
    head = f"relugate: {model}: {report['status']} (exit {report['exit_code']})"
    if report["error"] is not None:
        head += f", stopped in {report['stage']}: {report['error']['kind']}"
    lines = [head]
    guarantee = report["guarantee"]
    if guarantee is not None:
        met = "met" if guarantee["met"] else "NOT met"
        lines.append(f"  require {guarantee['require']}: {met} ({guarantee['status']})")
        for row in guarantee["properties"]:
            verdict = row["verdict"] or "not verified"
            how = f" ({row['method']})" if row.get("method") else ""
            gate = ", gated" if row["gated"] else ""
            lines.append(f"    {row['source']}: {verdict}{how} -> {row['status']}{gate}")
    s = report["summary"]
    if s is not None and s["relus_after"] is not None:
        lines.append(
            f"  ReLUs {s['relus_before']} -> {s['relus_after']} ({s['relus_removed']} removed), "
            f"params {s['params_before']} -> {s['params_after']}, "
            f"gates {'n/a' if s['gates'] is None else s['gates']}"
        )
        if s["fidelity_same_argmax"] is not None:
            lines.append(
                f"  fidelity (same argmax): {_percent(s['fidelity_same_argmax'])} of samples, "
                f"{_percent(s['fidelity_safe_same_argmax'])} where the original is safe"
            )
    stages = report["timings"]["stages"]
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items())
    lines.append(f"  time {report['timings']['total']:.2f} s ({parts})")
    return lines
