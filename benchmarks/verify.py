"""Verification benchmark: every public instance, decided within its timeout?

For each (network, spec, timeout) of ``../shared/benchmarks/*/instances.csv``:
run ``verify_model``; then attack the answer independently: a ``violated``
must come with an input in the box whose output onnxruntime finds unsafe; a
``holds`` must survive 100,000 uniform samples and PGD from 20 starts, all
run in onnxruntime on the original file.  Any broken answer is flagged WRONG.

    python -m benchmarks.verify [--only acasxu] [--limit-seconds 30] [--skip-attack]
        [--instances NET:SPEC,...] [--unknown-from RESULTS.json]

``--instances`` / ``--unknown-from`` rerun a subset and merge it into the existing
results file (see ``verify_subset``): rerun rows carry the time of their run.

Writes benchmarks/results/verify.json and verify.md (merging
benchmarks/results/reference.json, the reference verifier run side by side,
when present).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track

from benchmarks import verify_subset
from benchmarks.meta import run_meta
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import read_vnnlib
from relugate.compiler.verify import float32_inside, verify_model
from relugate.passes.analysis.attack import margin_objective
from relugate.passes.analysis.pgd import pgd_maximize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ATTACK_SAMPLES = 100_000
ATTACK_STARTS = 20


def instances(only: str | None) -> list[tuple[Path, Path, float]]:
    rows = []
    for table in sorted((ROOT.parent / "shared" / "benchmarks").glob("*/instances.csv")):
        if only and table.parent.name != only:
            continue
        with table.open() as fh:
            for model, spec, timeout in csv.reader(fh):
                rows.append((table.parent / model, (table.parent / spec).resolve(), float(timeout)))
    return rows


def check_counterexample(model: Path, spec: Path, cex: dict[str, list[float]]) -> bool:
    net = import_network(load_model(model))
    x = np.array(cex["input"], dtype=np.float32)
    y = run_batch(str(model), net.input, x[None]).astype(np.float64)
    prop = read_vnnlib(spec)
    return any(
        case.box.contains(x.astype(np.float64))[0] and case.is_unsafe(y)[0] for case in prop.cases
    )


def attack_holds(model: Path, spec: Path, seed: int = 0) -> bool:
    """True when no sample or PGD point breaks the 'holds' claim."""
    net = import_network(load_model(model))
    rng = np.random.default_rng(seed)
    for case in read_vnnlib(spec).cases:
        x = case.box.sample(ATTACK_SAMPLES, rng)
        found = [
            pgd_maximize(
                margin_objective(net, poly), case.box, rng, starts=ATTACK_STARTS, steps=50
            ).x
            for poly in case.unsafe
        ]
        x = np.concatenate([x, np.array(found).reshape(-1, case.box.dim)])
        y = run_batch(str(model), net.input, float32_inside(x, case.box)).astype(np.float64)
        if case.is_unsafe(y).any():
            return False
    return True


def run_one(model: Path, spec: Path, timeout: float, attack: bool) -> dict[str, Any]:
    result = verify_model(model, [spec], timeout=timeout)
    row: dict[str, Any] = {
        "network": model.name,
        "spec": spec.name,
        "timeout": timeout,
        "verdict": result.verdict,
        "method": result.method,
        "seconds": result.seconds,
        "boxes": sum(g["boxes"] for g in result.goals),
    }
    if result.verdict == "violated":
        assert result.counterexample is not None
        row["checked"] = check_counterexample(model, spec, result.counterexample)
    elif result.verdict == "holds" and attack:
        row["checked"] = attack_holds(model, spec)
    return row


def reference_rows() -> dict[tuple[str, str], dict[str, Any]]:
    path = RESULTS / "reference.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    return {(r["network"], r["spec"]): r for r in rows}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_folder: dict[str, Any] = {}
    for r in rows:
        folder = by_folder.setdefault(
            r["folder"],
            {"instances": 0, "holds": 0, "violated": 0, "unknown": 0, "wrong": 0, "seconds": []},
        )
        folder["instances"] += 1
        folder[r["verdict"]] += 1
        folder["wrong"] += int(r.get("checked") is False)
        folder["seconds"].append(r["seconds"])
    for folder in by_folder.values():
        folder["median_seconds"] = float(np.median(folder.pop("seconds")))
    return by_folder


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    ref = reference_rows()
    lines = [
        "# Verification of the public instances",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}, one process, "
        f"timeouts from instances.csv (capped at {meta['limit_seconds']} s). 'checked': "
        "violated -> the counterexample is unsafe in onnxruntime; holds -> 100,000 samples "
        "and PGD from 20 starts in onnxruntime find no violation. "
        f"Reference: {meta.get('reference', 'not run')}."
        + (
            " Rows with a 'rerun' time were run again then, on the code of that time "
            "(`--instances` / `--unknown-from`); the others are from the first run."
            if meta.get("reruns")
            else ""
        ),
        "",
        "| folder | instances | holds | violated | unknown | wrong | median s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in summary(rows).items():
        lines.append(
            f"| {name} | {f['instances']} | {f['holds']} | {f['violated']} | {f['unknown']} | "
            f"{f['wrong']} | {f['median_seconds']:.2f} |"
        )
    reruns = any("rerun" in r for r in rows)
    lines += [
        "",
        "| network | spec | verdict | method | s | boxes | checked | reference | ref s |"
        + (" rerun |" if reruns else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if reruns else ""),
    ]
    for r in rows:
        other = ref.get((r["network"], r["spec"]))
        checked = {True: "ok", False: "WRONG", None: "-"}[r.get("checked")]
        ref_cells = f"{other['verdict']} | {other['seconds']:.2f}" if other else "- | -"
        lines.append(
            f"| {r['network']} | {r['spec']} | {r['verdict']} | {r['method']} | "
            f"{r['seconds']:.2f} | {r['boxes']} | {checked} | {ref_cells} |"
            + (f" {r.get('rerun', '-')} |" if reruns else "")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="one benchmark folder (acasxu, mnistfc, ...)")
    parser.add_argument("--limit-seconds", type=float, default=float("inf"))
    parser.add_argument("--skip-attack", action="store_true", help="do not attack 'holds' answers")
    parser.add_argument("--output", default="verify", help="results file stem")
    parser.add_argument("--instances", help="comma-separated NET:SPEC substrings to rerun")
    parser.add_argument(
        "--unknown-from", type=Path, help="rerun what this results file left unknown"
    )
    args = parser.parse_args(argv)
    console = Console()
    subset = args.instances is not None or args.unknown_from is not None
    chosen = verify_subset.select(
        instances(args.only),
        args.instances.split(",") if args.instances else None,
        verify_subset.unknown_in(args.unknown_from) if args.unknown_from else None,
    )
    rows = []
    for model, spec, timeout in track(chosen, description="instances", console=console):
        row = run_one(model, spec, min(timeout, args.limit_seconds), not args.skip_attack)
        row["folder"] = model.parent.name
        if subset:
            row["rerun"] = verify_subset.stamp()
        rows.append(row)
        console.print(
            f"{row['network']} {row['spec']}: {row['verdict']} ({row['method']}, "
            f"{row['seconds']:.2f} s) checked={row.get('checked')}",
            highlight=False,
        )
    meta = run_meta(limit_seconds=args.limit_seconds)
    ref_readme = ROOT / "benchmarks" / "reference" / "README.md"
    if ref_readme.is_file() and reference_rows():
        meta["reference"] = "see benchmarks/reference/README.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if subset:
        meta, rows = _merged(RESULTS / f"{args.output}.json", meta, rows)
    (RESULTS / f"{args.output}.json").write_text(
        json.dumps({"meta": meta, "summary": summary(rows), "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / f"{args.output}.md").write_text(markdown(rows, meta))
    console.print(markdown(rows, meta).split("\n\n")[2], markup=False, highlight=False)
    return 0


def _merged(
    path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The earlier results file with the rerun rows merged in; its header keeps the
    first run's and lists the reruns."""
    if not path.is_file():
        return meta, rows
    old = json.loads(path.read_text())
    first = {**old["meta"], "reruns": [*old["meta"].get("reruns", []), meta]}
    return first, verify_subset.merge(old["rows"], rows)


if __name__ == "__main__":
    sys.exit(main())
