"""Latency of what users deploy (issue 7): the reduced, gated bundle vs the original.

Per case (a public network and one of its specs) and batch size (1 and 1024):
``relugate.compile`` builds the bundle as a user would (bounds on the spec's
input box, stable ReLUs removed, gates where the property is violated,
MetaSchedule tuning for about ``--tune-seconds`` into a cached database,
``build/pipeline_tuning/``), then, side by side in one process and one
thread, interleaved rounds time

- ``ort_original``: onnxruntime on the original file (batch axis made symbolic),
- ``ort_final``: onnxruntime on the bundle's ``model.onnx`` (reduced and gated; as
  in the library, a gated model's ungated output is exposed too, packed on the
  batch axis, so the runtime can count gate firings),
- ``bundle``: ``relugate.runtime.load(bundle).run`` (TVM, input and domain
  checks and gate counting included),

on inputs drawn uniformly from the spec's input box.  Ratios are to
``ort_original``: the issue's goal is ``bundle`` at most 1.0.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.pipeline_latency [--tune-seconds 60]
        [--rounds 9] [--batches 1,1024]

Writes benchmarks/results/pipeline_latency.json and pipeline_latency.md.
"""

from __future__ import annotations

import os

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import relugate
from benchmarks.tvm_latency import machine, timed_rounds
from relugate.compiler.backends.tvm import prepare
from relugate.compiler.onnx_run import mismatch, session
from relugate.compiler.spec import read_vnnlib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "benchmarks"
CACHE = ROOT / "build" / "pipeline_tuning"
BUNDLES = ROOT / "build" / "pipeline_bundles"
CASES = {  # name: (network, spec); the verdicts are in the JSON
    "acas_1_2_prop_2": ("acasxu/ACASXU_run2a_1_2_batch_2000.onnx", "acasxu/prop_2.vnnlib"),
    "acas_1_1_prop_3": ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_3.vnnlib"),
    "mnist_256x2_prop_1_0.05": ("mnistfc/mnist-net_256x2.onnx", "mnistfc/prop_1_0.05.vnnlib"),
    "mnist_256x2_prop_2_0.05": ("mnistfc/mnist-net_256x2.onnx", "mnistfc/prop_2_0.05.vnnlib"),
}
ENGINES = ("ort_original", "ort_final", "bundle")


def build(name: str, batch: int, tune_seconds: float) -> tuple[Path, dict[str, Any]]:
    """Compile the case's bundle; the compile report's summary and verdicts."""
    network, spec = CASES[name]
    out = BUNDLES / f"{name}_b{batch}"
    outcome = relugate.compile(
        SHARED / network,
        SHARED / spec,
        out,
        batch=batch,
        tune_seconds=tune_seconds,
        tuning_db=CACHE / f"{name}_b{batch}",
        force=True,
    )
    outcome.raise_for_status()
    return out, outcome.report


def inputs(spec: str, sample_shape: tuple[int, ...], batch: int) -> np.ndarray:
    box = read_vnnlib(SHARED / spec).cases[0].box
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(box.lo, dtype=np.float64), np.asarray(box.hi, dtype=np.float64)
    x = lo + rng.random((batch, lo.size)) * (hi - lo)
    return x.astype(np.float32).reshape(batch, *sample_shape)


def run_case(name: str, batch: int, tune_seconds: float, rounds: int) -> dict[str, Any]:
    import relugate.runtime as rt

    network, spec = CASES[name]
    out, report = build(name, batch, tune_seconds)
    bundle = rt.load(out)
    original, specs = prepare(onnx.load(str(SHARED / network)), None)
    final, _ = prepare(onnx.load(str(out / "model.onnx")), None)
    x = inputs(spec, tuple(specs[0].sample_shape), batch)
    sessions = {"ort_original": session(original), "ort_final": session(final)}
    feed = {specs[0].name: x}
    fns: dict[str, Callable[[], Any]] = {
        "ort_original": lambda: sessions["ort_original"].run(None, feed),
        "ort_final": lambda: sessions["ort_final"].run(None, feed),
        "bundle": lambda: bundle.run(x),
    }
    want = np.asarray(fns["ort_final"]()[0])[:batch].reshape(batch, -1)
    error = float(mismatch(want, np.asarray(bundle.run(x)).reshape(batch, -1)).max())
    samples = timed_rounds(fns, rounds)
    seconds = {k: min(v) for k, v in samples.items()}
    base = seconds["ort_original"]
    summary = report.get("summary", {})
    return {
        "case": name,
        "network": network,
        "spec": spec,
        "batch": batch,
        "verdicts": [v["verdict"] for v in report["compile"]["verdict_original"]],
        "gates": summary.get("gates"),
        "relus": [summary.get("relus_before"), summary.get("relus_after")],
        "params": [summary.get("params_before"), summary.get("params_after")],
        "us_per_call": {k: round(v * 1e6, 2) for k, v in seconds.items()},
        "us_per_call_median": {k: round(float(np.median(v)) * 1e6, 2) for k, v in samples.items()},
        "ratio_to_ort_original": {k: round(v / base, 3) for k, v in seconds.items()},
        "bundle_vs_ort_final_max_relative_error": error,
        "tuning": report["compile"].get("backend", {}).get("tuning"),
    }


def merged(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's cases, plus the last run's cases it did not redo (each keeps its own
    tuning budget and load figures)."""
    path = RESULTS / "pipeline_latency.json"
    old = json.loads(path.read_text())["cases"] if path.is_file() else []
    done = {(c["case"], c["batch"]) for c in cases}
    order = {name: i for i, name in enumerate(CASES)}
    kept = [c for c in old if (c["case"], c["batch"]) not in done]
    return sorted(kept + cases, key=lambda c: (order.get(c["case"], 99), c["batch"]))


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Latency of the deployed bundle vs the original (issue 7)",
        "",
        f"One thread, {m['cpu']} ({m['machine']}, {m['cores']} cores); load: the load "
        "average when the case was measured (other work shared the machine). "
        f"TVM {m['tvm']}, onnxruntime {m['onnxruntime']}. Bundles built by `relugate.compile` "
        f"on the spec (stable ReLUs removed on its input box, gates where violated, "
        "MetaSchedule budget per case in the tuning column, database cached and reused). "
        "Minimum over "
        f"{result['rounds']} interleaved rounds of the mean time per call, microseconds; "
        "inputs uniform in the spec's box; ratio = time / onnxruntime on the original file.",
        "",
        "| case | batch | original | ReLUs | params | gates | ort original | ort final "
        "| bundle.run | ort final/original | bundle/original | tuning s / trials | load "
        "| max rel. err |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in result["cases"]:
        us, r = c["us_per_call"], c["ratio_to_ort_original"]
        relus, params = c["relus"], c["params"]
        lines.append(
            f"| {c['case']} | {c['batch']} | {', '.join(c['verdicts'])} | "
            f"{relus[0]} -> {relus[1]} | {params[0]:,} -> {params[1]:,} | {c['gates']} | "
            f"{us['ort_original']:.1f} | {us['ort_final']:.1f} | "
            f"{us['bundle']:.1f} | {r['ort_final']:.2f} | {r['bundle']:.2f} | "
            f"{c['tune_seconds']:.0f} / {(c['tuning'] or {}).get('trials', 0)} | "
            f"{c['load_average']:.1f} | "
            f"{c['bundle_vs_ort_final_max_relative_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--batches", default="1,1024")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    missing = [n for n in names if not (SHARED / CASES[n][0]).is_file()]
    if missing:
        raise SystemExit(f"benchmark networks not found under {SHARED}: {', '.join(missing)}")
    result: dict[str, Any] = {
        "machine": machine(),
        "rounds": args.rounds,
        "tune_seconds": args.tune_seconds,
        "cases": [],
    }
    for name in names:
        for batch in (int(b) for b in args.batches.split(",")):
            case = run_case(name, batch, args.tune_seconds, args.rounds)
            case["tune_seconds"] = args.tune_seconds
            case["load_average"] = os.getloadavg()[0]
            result["cases"].append(case)
            print(json.dumps({k: case[k] for k in ("case", "batch", "us_per_call")}), flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    result["cases"] = merged(result["cases"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "pipeline_latency.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
