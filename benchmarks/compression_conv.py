"""Convnet_maxpool (VeriVital, VNN-COMP 2021) through the real compile path.

For each spec box: the pipeline (``default_passes()``) with
``PassContext(domain=box, options={"maxpool": "relu"})``, so ``maxpool_to_relu``
rewrites the MaxPool into depthwise-conv/ReLU max trees and ``stable_relu``
then removes what the bounds prove stable.  ReLUs / params / FLOPs of the
original, after the rewrite and after stable_relu; MaxPool layers left; the
final network against the original ONNX file in onnxruntime (declared batch
made symbolic, nodes untouched) on samples of the box, relative to
``max(1, |y|)`` (the project's ``TOLERANCE``), plus PGD; and onnxruntime
latency final / original at batch 1 and 64, interleaved calls in one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from benchmarks.compression import SHARED, batched, interleaved_latency, sample_gap, symbolic_batch
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.onnx_run import TOLERANCE
from relugate.compiler.pipeline import Pipeline, default_passes
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.base import PassContext

VERIVITAL = SHARED / "verivital"
MODEL = VERIVITAL / "Convnet_maxpool.onnx"
SAMPLES_DEFAULT, SAMPLES_ALL = 20_000, 100_000
SPECS_DEFAULT = 3
ROUNDS_1, ROUNDS_64 = 500, 60


def specs() -> list[Path]:
    return sorted((VERIVITAL / "specs").glob("*.vnnlib"))


def run(every: bool, console: Console) -> list[dict[str, Any]]:
    if not MODEL.is_file():
        console.print(f"no Convnet_maxpool at {MODEL}; that part is skipped")
        return []
    samples = SAMPLES_ALL if every else SAMPLES_DEFAULT
    chosen = specs() if every else specs()[:SPECS_DEFAULT]
    return [one_spec(spec, samples, console) for spec in chosen]


def one_spec(
    spec: Path,
    samples: int,
    console: Console,
    model: Path = MODEL,
    rounds: tuple[int, int] = (ROUNDS_1, ROUNDS_64),
) -> dict[str, Any]:
    net = import_network(load_model(model))
    box = read_vnnlib(spec).domain()
    ctx = PassContext(domain=box, options={"maxpool": "relu"})
    result = Pipeline(default_passes()).run(net, ctx)
    steps = {s.name: s for s in result.steps}
    final = result.network
    pool, stable = steps["maxpool_to_relu"], steps["stable_relu"]
    original = symbolic_batch(model)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"{spec.name}: {samples:,} samples", total=samples)
        gap = sample_gap(
            original,
            batched(final),
            box,
            net.input.sample_shape,
            samples,
            progress=lambda n: bar.advance(task, n),
        )
    pgd = max_difference(net, final, box, np.random.default_rng(1), starts=10, steps=50)
    rng = np.random.default_rng(0)
    x1 = rng.random((1, *net.input.sample_shape), dtype=np.float32)
    x64 = rng.random((64, *net.input.sample_shape), dtype=np.float32)
    layers = stable.report.get("layers", {})
    row = {
        "spec": spec.name,
        "original": net.stats(),
        "maxpool_rewritten": pool.after,
        "final": final.stats(),
        "maxpool_seconds": round(pool.seconds, 3),
        "stable_relu_seconds": round(stable.seconds, 3),
        "stable_units": {
            "units": sum(r["units"] for r in layers.values()),
            "active": sum(r.get("active", 0) for r in layers.values()),
            "inactive": sum(
                r.get("inactive_left", 0) + r["inactive_removed"] for r in layers.values()
            ),
            "unstable": sum(r.get("unstable", 0) for r in layers.values()),
        },
        "skipped": stable.report.get("skipped", {}),
        "check": {**gap, "pgd_max_abs_diff": pgd.value, "tolerance": TOLERANCE},
        "latency_batch1": interleaved_latency(str(model), batched(final), x1, rounds[0]),
        "latency_batch64": interleaved_latency(original, batched(final), x64, rounds[1]),
    }
    console.print(
        f"conv {spec.name}: relus {net.relu_count()} -> {pool.after['relus']} -> "
        f"{final.relu_count()}, maxpools left {final.stats()['maxpools']}, "
        f"rel diff {gap['max_rel_diff']:.2g}, latency ratio "
        f"{row['latency_batch1']['ratio']:.2f} / {row['latency_batch64']['ratio']:.2f}"
    )
    return row


def _three(row: dict[str, Any], key: str) -> str:
    return " -> ".join(str(row[s][key]) for s in ("original", "maxpool_rewritten", "final"))


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["## Convnet_maxpool", "", "Skipped: no model at ../shared/benchmarks/verivital."]
    samples = rows[0]["check"]["samples"]
    lines = [
        "## Convnet_maxpool (VeriVital), each spec's input box",
        "",
        "The real compile path: `default_passes()` with `PassContext(domain=box, "
        'options={"maxpool": "relu"})`. Counts: original (with MaxPool) -> after '
        "maxpool_to_relu -> after stable_relu. Diff: final network against the original "
        f"ONNX file, both in onnxruntime on {samples:,} points of the box"
        + (
            " (20,000 by default: 100,000 take ~100 s per spec here; `--all` runs them)"
            if samples < SAMPLES_ALL
            else ""
        )
        + ", absolute and relative to max(1, |y|) (tolerance "
        f"{TOLERANCE:g}), and PGD (10 starts, 50 steps). Latency: onnxruntime, 1 thread, "
        f"median of {rows[0]['latency_batch1']['rounds']} (batch 1) and "
        f"{rows[0]['latency_batch64']['rounds']} (batch 64) interleaved calls; ratio = "
        "final / original file. Stable units: per-position ReLU units that CROWN proves "
        "stable on the box, of all units of the final network.",
        "",
        "| spec | ReLUs | params | FLOPs | MaxPool left | stable units (active + inactive "
        "/ all) | stable_relu s | max abs diff | max rel diff | PGD diff | batch 1: "
        "original us | final us | ratio | batch 64: ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, st, l1 = r["check"], r["stable_units"], r["latency_batch1"]
        stable = st["units"] - st["unstable"]
        lines.append(
            f"| {r['spec']} | {_three(r, 'relus')} | {_three(r, 'params')} | "
            f"{_three(r, 'flops')} | {r['final']['maxpools']} | {stable} / {st['units']} | "
            f"{r['stable_relu_seconds']:.1f} | {c['max_abs_diff']:.1e} | "
            f"{c['max_rel_diff']:.1e} | {c['pgd_max_abs_diff']:.1e} | {l1['a_us']:.0f} | "
            f"{l1['b_us']:.0f} | {l1['ratio']:.2f} | {r['latency_batch64']['ratio']:.2f} |"
        )
    worst = max(max(r["check"]["max_rel_diff"], r["check"]["pgd_max_abs_diff"]) for r in rows)
    removed = sum(r["maxpool_rewritten"]["relus"] - r["final"]["relus"] for r in rows)
    reasons = sorted({why for r in rows for why in r["skipped"].values()})
    lines += [
        "",
        f"MaxPool fully rewritten in every row: {all(r['final']['maxpools'] == 0 for r in rows)}. "
        f"Worst difference {worst:.1e} ({'within' if worst <= TOLERANCE else 'OUTSIDE'} "
        f"{TOLERANCE:g}). ReLUs removed by stable_relu over all specs: {removed}.",
    ]
    if reasons:
        lines += ["", "stable_relu left these ReLU layers in place:", ""]
        lines += [f"- {why}" for why in reasons]
    return lines
