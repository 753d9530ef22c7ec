"""TVM latency benchmark (issue 7): onnxruntime vs TVM untuned vs TVM tuned, one thread.

Per network (the shipped collision net, ACAS Xu 1_1, mnist-net_256x2) and
batch size (1 and 1024): onnxruntime on the model (one intra-op thread,
sequential), the TVM library untuned and tuned (MetaSchedule for about
``--tune-seconds`` per case, database cached in ``build/tvm_tuning/`` and
reused on the next run), each called through the lean path (preallocated
input, zero-copy outputs), and the tuned library as a bundle through
``relugate.runtime`` (input checks and the domain check included).  The
engines are timed in interleaved rounds in one process, so load from other
work on the machine hits them alike; each figure is the minimum over rounds
of the mean time per call (the least disturbed round; medians are in the
JSON).  ``--only``/``--batches`` rerun some cases and keep the others from
the last run.

    OPENBLAS_NUM_THREADS=1 nice -n 10 python -m benchmarks.tvm_latency [--tune-seconds 60]
        [--rounds 7] [--only collision,acas,mnist] [--batches 1,1024]

Writes benchmarks/results/tvm_latency.json and tvm_latency.md.
"""

from __future__ import annotations

import os

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool

import argparse
import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate import __version__
from relugate.compiler.atomic import atomic_directory
from relugate.compiler.backends.tvm import Lowered, lower, prepare
from relugate.compiler.bundle import write_bundle
from relugate.compiler.onnx_run import mismatch, session

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "benchmarks"
CACHE = ROOT / "build" / "tvm_tuning"
NETWORKS = {
    "collision": (ROOT / "examples" / "collision.onnx", ([5.0, 10.0, 10.0], [15.0, 30.0, 40.0])),
    "acas": (SHARED / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx", (-0.5, 0.5)),
    "mnist": (SHARED / "mnistfc" / "mnist-net_256x2.onnx", (0.0, 1.0)),
}
ROUND_SECONDS = 0.3
ENGINES = ("onnxruntime", "tvm_untuned", "tvm_tuned", "bundle")


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""``wall``: elapsed time; ``cpu``: this thread's CPU time, which leaves out the time the
thread waits for a core (on a shared 2-core machine at load 4-6, wall times of the same
call varied 2-4x between rounds).  Single-threaded engines only."""


def timed_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """Per engine, the mean seconds per call of each round; engines interleaved per round."""
    now = CLOCKS[clock]
    calls = {}
    for name, fn in fns.items():
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.05:
            fn()
            n += 1
        calls[name] = max(1, int(n * ROUND_SECONDS / 0.05))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = now()
            for _ in range(calls[name]):
                fn()
            samples[name].append((now() - start) / calls[name])
    return samples


def domain(box: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = (np.broadcast_to(np.asarray(b, dtype=float), size) for b in box)
    return lo, hi


def make_bundle(lowered: Lowered, model: onnx.ModelProto, box: Any, out: Path) -> Path:
    size = int(np.prod(lowered.input.sample_shape))
    lo, hi = domain(box, size)
    shutil.rmtree(out, ignore_errors=True)
    with atomic_directory(out) as tmp:
        write_bundle(tmp, lowered, model, None, {"lo": lo.tolist(), "hi": hi.tolist()}, "reject")
    return out


def run_case(name: str, batch: int, tune_seconds: float, rounds: int, tmp: Path) -> dict[str, Any]:
    import relugate.runtime as rt

    path, box = NETWORKS[name]
    model = onnx.load(str(path))
    untuned = lower(model, "llvm", batch=batch)
    db = CACHE / f"{name}_b{batch}"
    tuned = lower(model, "llvm", batch=batch, tune_seconds=tune_seconds, tuning_db=db)
    sample = untuned.input.sample_shape
    lo, hi = domain(box, int(np.prod(sample)))
    rng = np.random.default_rng(0)
    x = (lo + rng.random((batch, lo.size)) * (hi - lo)).astype(np.float32).reshape(batch, *sample)
    batched, specs = prepare(model, None)
    sess = session(batched)
    feed = {specs[0].name: x}
    run_untuned, run_tuned = untuned.load().run, tuned.load().run
    bundle = rt.load(make_bundle(tuned, model, box, tmp / f"{name}_b{batch}"))
    fns: dict[str, Callable[[], Any]] = {
        "onnxruntime": lambda: sess.run(None, feed),
        "tvm_untuned": lambda: run_untuned(x),
        "tvm_tuned": lambda: run_tuned(x),
        "bundle": lambda: bundle.run(x),
    }
    want = np.asarray(sess.run(None, feed)[0]).reshape(batch, -1)
    errors = {
        k: float(mismatch(want, np.asarray(fns[k]()).reshape(batch, -1)).max()) for k in ENGINES[1:]
    }
    samples = timed_rounds(fns, rounds)
    seconds = {k: min(v) for k, v in samples.items()}
    ort = seconds["onnxruntime"]
    return {
        "network": name,
        "model": str(path.relative_to(path.parents[1])),
        "batch": batch,
        "us_per_call": {k: round(v * 1e6, 2) for k, v in seconds.items()},
        "us_per_call_median": {k: round(float(np.median(v)) * 1e6, 2) for k, v in samples.items()},
        "ratio_to_onnxruntime": {k: round(v / ort, 3) for k, v in seconds.items()},
        "max_relative_error": errors,
        "tuning": tuned.tuning.to_json() if tuned.tuning else None,
    }


def merged(cases: list[dict[str, Any]], names: list[str], batches: list[int]) -> list[Any]:
    """This run's cases, plus the last run's cases it did not redo."""
    path = RESULTS / "tvm_latency.json"
    old = json.loads(path.read_text())["cases"] if path.is_file() else []
    kept = [c for c in old if not (c["network"] in names and c["batch"] in batches)]
    order = {n: i for i, n in enumerate(NETWORKS)}
    return sorted(kept + cases, key=lambda c: (order.get(c["network"], 99), c["batch"]))


def machine() -> dict[str, Any]:
    import onnxruntime
    import tvm

    from relugate.compiler.backends.targets import resolve_target

    return {
        "cpu": resolve_target("llvm").mcpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "threads": 1,
        "relugate": __version__,
        "tvm": tvm.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# TVM latency (issue 7)",
        "",
        f"One thread, {m['cpu']} ({m['machine']}, {m['cores']} cores), load average "
        f"{m['load_average_at_start']:.1f} at start and {m['load_average_at_end']:.1f} at "
        f"end (other work shared the machine). TVM {m['tvm']}, onnxruntime "
        f"{m['onnxruntime']}. Minimum over {result['rounds']} interleaved rounds of the mean "
        "time per call, in microseconds; ratio = time / onnxruntime's (below 1: faster). "
        "Tuning: seconds spent in this run (budget per case in the JSON; overrun: at most "
        "the batch of candidates in flight), records: tuning records in the cached database "
        "(build/tvm_tuning/, grows across runs). Load figures: of the last run; rows from "
        "earlier runs keep their own ratios.",
        "",
        "| network | batch | onnxruntime | TVM untuned | TVM tuned | bundle.run | "
        "untuned/ort | tuned/ort | bundle/ort | trials | tuning s | records | max rel. err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        us, r, t = c["us_per_call"], c["ratio_to_onnxruntime"], c["tuning"] or {}
        err = max(c["max_relative_error"].values())
        lines.append(
            f"| {c['network']} | {c['batch']} | {us['onnxruntime']:.1f} | {us['tvm_untuned']:.1f} "
            f"| {us['tvm_tuned']:.1f} | {us['bundle']:.1f} | {r['tvm_untuned']:.2f} | "
            f"{r['tvm_tuned']:.2f} | {r['bundle']:.2f} | {t.get('trials', 0)} | "
            f"{t.get('seconds', 0):.0f} | {t.get('records', 0)} | {err:.1e} |"
        )
    return "\n".join(lines) + "\n"


def rewrite_markdown() -> None:
    """Regenerate the .md from the .json (``--markdown-only``)."""
    result = json.loads((RESULTS / "tvm_latency.json").read_text())
    (RESULTS / "tvm_latency.md").write_text(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default=",".join(NETWORKS))
    parser.add_argument("--batches", default="1,1024")
    parser.add_argument("--markdown-only", action="store_true")
    args = parser.parse_args()
    if args.markdown_only:
        rewrite_markdown()
        return
    names = [n for n in args.only.split(",") if n]
    missing = [n for n in names if not NETWORKS[n][0].is_file()]
    if missing:
        raise SystemExit(f"models not found: {', '.join(str(NETWORKS[n][0]) for n in missing)}")
    result: dict[str, Any] = {
        "machine": machine(),
        "rounds": args.rounds,
        "tune_seconds": args.tune_seconds,
        "cases": [],
    }
    tmp = ROOT / "build" / "tvm_latency_bundles"
    batches = [int(b) for b in args.batches.split(",")]
    for name in names:
        for batch in batches:
            case = run_case(name, batch, args.tune_seconds, args.rounds, tmp)
            case["tune_seconds"] = args.tune_seconds
            result["cases"].append(case)
            print(json.dumps({k: case[k] for k in ("network", "batch", "us_per_call")}), flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    result["cases"] = merged(result["cases"], names, batches)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tvm_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "tvm_latency.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
