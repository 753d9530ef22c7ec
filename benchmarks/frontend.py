"""Front-end benchmark: load, normalize and compile every public benchmark network.

For each network (with the first spec of its instances.csv): time to load and
import, time of each pass, layers/ReLUs/params/FLOPs before and after, the
largest relative error against the original in onnxruntime on 1,000 inputs
from the spec's box, and onnxruntime latency of the original and the
normalized model at batch 1, measured side by side (alternating runs) in one
process, reported as a ratio.

    python -m benchmarks.frontend      (or: make bench)

Writes benchmarks/results/frontend.json and benchmarks/results/frontend.md.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console
from rich.progress import track

from benchmarks.meta import run_meta
from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.network import TensorSpec
from relugate.compiler.onnx_run import mismatch, run_batch, session
from relugate.compiler.spec import read_vnnlib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLES = 1000
LATENCY_ROUNDS = 2000


def benchmark_dir() -> Path:
    return ROOT.parent / "shared" / "benchmarks"


def first_instances() -> list[tuple[Path, Path]]:
    seen: dict[Path, Path] = {}
    for table in sorted(benchmark_dir().glob("*/instances.csv")):
        with table.open() as fh:
            for onnx_file, spec_file, _ in csv.reader(fh):
                seen.setdefault(table.parent / onnx_file, table.parent / spec_file)
    return sorted(seen.items())


def latency_ratio(
    original: str, compiled: onnx.ModelProto, shape: tuple[int, ...]
) -> dict[str, float]:
    """Median per-call latency of both models at batch 1, interleaved to share machine noise."""
    a, b = session(original), session(compiled)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    name_a, name_b = a.get_inputs()[0].name, b.get_inputs()[0].name
    times_a, times_b = [], []
    for _ in range(LATENCY_ROUNDS):
        t0 = time.perf_counter()
        a.run(None, {name_a: x})
        t1 = time.perf_counter()
        b.run(None, {name_b: x})
        t2 = time.perf_counter()
        times_a.append(t1 - t0)
        times_b.append(t2 - t1)
    med_a, med_b = float(np.median(times_a)), float(np.median(times_b))
    return {"original_us": 1e6 * med_a, "normalized_us": 1e6 * med_b, "ratio": med_b / med_a}


def measure(model: Path, spec: Path, out_root: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    net = import_network(load_model(model))
    import_s = time.perf_counter() - t0
    out = out_root / model.stem
    result = compile_model(model, CompileOptions(out_dir=out), specs=[spec])
    exported = onnx.load(str(out / "model.onnx"))
    box = read_vnnlib(spec).domain()
    x = box.sample(SAMPLES, np.random.default_rng(0))
    spec_in = TensorSpec(net.input.name, net.input.shape, net.input.has_batch)
    error = float(
        mismatch(run_batch(str(model), spec_in, x), run_batch(exported, spec_in, x)).max()
    )
    report = result.report
    return {
        "network": model.name,
        "spec": spec.name,
        "import_s": import_s,
        "compile_s": report["seconds"],
        "passes": {p["name"]: p["seconds"] for p in report["passes"]},
        "before": report["before"],
        "after": report["after"],
        "max_relative_error": error,
        "latency_batch1": latency_ratio(str(model), exported, net.input.shape),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Front end: normalization of the public benchmark networks",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}. "
        f"Error: max relative error vs the original in onnxruntime on {SAMPLES} inputs "
        "from the spec's box. Latency: onnxruntime, 1 thread, batch 1, median of "
        f"{LATENCY_ROUNDS} interleaved calls; ratio = normalized / original.",
        "",
        "| network | layers | ReLUs | params | FLOPs | import s | compile s | error | "
        "orig us | norm us | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a, lat = r["before"], r["after"], r["latency_batch1"]
        lines.append(
            f"| {r['network']} | {b['layers']} -> {a['layers']} | {b['relus']} -> {a['relus']} | "
            f"{b['params']} -> {a['params']} | {b['flops']} -> {a['flops']} | "
            f"{r['import_s']:.3f} | {r['compile_s']:.3f} | {r['max_relative_error']:.1e} | "
            f"{lat['original_us']:.1f} | {lat['normalized_us']:.1f} | {lat['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    console = Console()
    instances = first_instances()
    if not instances:
        console.print(f"no benchmarks at {benchmark_dir()}; nothing to measure")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, spec in track(instances, description="networks", console=console):
            rows.append(measure(model, spec, Path(tmp)))
    meta = run_meta()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "frontend.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / "frontend.md").write_text(markdown(rows, meta))
    console.print((RESULTS / "frontend.md").read_text(), markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
