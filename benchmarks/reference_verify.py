"""Reference verifier (Marabou) on the public instances, side by side with relugate.

Runs in relugate's venv but uses only the standard library: each instance is
handed to ``benchmarks/reference/run_reference.py`` in the reference venv
(made by ``benchmarks/reference/setup.sh``) through a subprocess, so the two
verifiers share nothing but the ONNX and VNN-LIB files.

    python benchmarks/reference_verify.py [--only acasxu,vnncomp2021_test] [--limit-seconds 20]
        [--max-instances N] [--python /tmp/refvenv/bin/python]

Writes benchmarks/results/reference.json: {"meta": ..., "summary": ..., "rows": [
{"folder", "network", "spec", "timeout", "verdict", "seconds", "method", ...}]}
keyed like benchmarks/verify.py (file names of network and spec), which merges it.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "benchmarks" / "reference" / "run_reference.py"
RESULTS = ROOT / "benchmarks" / "results"
SLACK_SECONDS = 30.0  # process start and ONNX load, on top of the solver timeout


def instances(only: str | None) -> list[tuple[str, Path, Path, float]]:
    """(folder, model, spec, timeout) of shared/benchmarks/*/instances.csv; only: a,b,..."""
    rows = []
    folders = set(only.split(",")) if only else None
    for table in sorted((ROOT.parent / "shared" / "benchmarks").glob("*/instances.csv")):
        if folders and table.parent.name not in folders:
            continue
        with table.open() as fh:
            for model, spec, timeout in csv.reader(fh):
                folder = table.parent
                rows.append(
                    (folder.name, folder / model, (folder / spec).resolve(), float(timeout))
                )
    return rows


def run_one(python: str, model: Path, spec: Path, timeout: float) -> dict[str, Any]:
    """Run the reference on one instance; a crash or hang gives verdict 'unknown'."""
    cmd = [python, str(RUNNER), "--model", str(model), "--spec", str(spec)]
    cmd += ["--timeout", str(timeout)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout + SLACK_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        return {
            "verdict": "unknown",
            "seconds": time.perf_counter() - start,
            "method": "reference",
            "status": "killed",
        }
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            row: dict[str, Any] = json.loads(line)
            row["wall_seconds"] = wall
            return row
    return {
        "verdict": "unknown",
        "seconds": wall,
        "method": "reference",
        "status": f"exit {proc.returncode}",
        "error": proc.stderr[-300:],
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per folder: verdict counts and median seconds."""
    out: dict[str, Any] = {}
    for folder in sorted({r["folder"] for r in rows}):
        sub = [r for r in rows if r["folder"] == folder]
        out[folder] = {"instances": len(sub)}
        for verdict in ("holds", "violated", "unknown"):
            out[folder][verdict] = sum(r["verdict"] == verdict for r in sub)
        out[folder]["median_seconds"] = statistics.median(r["seconds"] for r in sub)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help="benchmark folders, comma-separated (acasxu,vnncomp2021_test)"
    )
    parser.add_argument("--limit-seconds", type=float, default=float("inf"))
    parser.add_argument("--max-instances", type=int, default=None)
    parser.add_argument("--python", default="/tmp/refvenv/bin/python", help="reference venv")
    parser.add_argument("--output", default="reference", help="results file stem")
    args = parser.parse_args(argv)
    if not Path(args.python).is_file():
        sys.exit(f"{args.python} missing: run benchmarks/reference/setup.sh first")
    todo = instances(args.only)[: args.max_instances]
    rows = []
    for i, (folder, model, spec, timeout) in enumerate(todo, 1):
        limit = min(timeout, args.limit_seconds)
        row = {"folder": folder, "network": model.name, "spec": spec.name, "timeout": limit}
        row.update(run_one(args.python, model, spec, limit))
        rows.append(row)
        print(
            f"[{i}/{len(todo)}] {folder} {model.name} {spec.name}: {row['verdict']} "
            f"({row.get('status')}, {row['seconds']:.2f} s)",
            flush=True,
        )
    meta = {
        "reference": rows[0]["method"] if rows else None,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "limit_seconds": args.limit_seconds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.output}.json"
    out.write_text(
        json.dumps({"meta": meta, "summary": summary(rows), "rows": rows}, indent=2) + "\n"
    )
    print(json.dumps(summary(rows), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
