"""Convnet_maxpool (VeriVital, VNN-COMP 2021) through the real compile path.

For each spec box: the pipeline (``default_passes()``) with
``PassContext(domain=box, options={"maxpool": "relu"})``, so ``maxpool_to_relu``
turns the MaxPool (and the ReLU before it) into a ``MaxTree`` over the window
elements the bounds leave as possible maxima (``max_prune``); ``stable_relu``
runs after it.  ReLUs (Relu elements of the exported graph) / params / FLOPs
of the original, of the full tree (``maxpool_prune=False``: every window a
depthwise-conv/ReLU tree, what the bounds prune) and of the final network;
MaxPool layers left; windows left with one element / the constant zero / a
tree; the final network against the original ONNX file in onnxruntime
(declared batch made symbolic, nodes untouched) on samples of the box,
relative to ``max(1, |y|)`` (the project's ``TOLERANCE``), plus PGD; and
onnxruntime latency final / original at batch 1 and 64, interleaved calls in
one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from benchmarks.compression import SHARED, batched, interleaved_latency, sample_gap, symbolic_batch
from relugate.compiler.domain import Box
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE
from relugate.compiler.pipeline import Pipeline, default_passes
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.base import PassContext
from relugate.passes.maxpool_to_relu import MaxPoolToRelu

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
    full = full_tree(net, box)
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
    pruned = pool.report.get("pruned", {})
    row = {
        "spec": spec.name,
        "original": net.stats(),
        "maxpool_rewritten": full.stats(),
        "final": final.stats(),
        "maxpool_seconds": round(pool.seconds, 3),
        "stable_relu_seconds": round(stable.seconds, 3),
        "windows": {
            key: sum(p.get(key, 0) for p in pruned.values())
            for key in ("windows", "one_element", "zero", "elements_kept")
        },
        "removed": {
            how: sum(p.get("removed", {}).get(how, 0) for p in pruned.values())
            for how in ("interval", "crown")
        },
        "dominated_entries": sum(e.claim == "dominated" for e in result.certificate),
        "pruned": pruned,
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


def full_tree(net: Network, box: Box) -> Network:
    """The network with every MaxPool rewritten as the full tree (no pruning)."""
    ctx = PassContext(domain=box, options={"maxpool": "relu", "maxpool_prune": False})
    before = Pipeline(default_passes()[:4]).run(net, ctx).network
    return MaxPoolToRelu().run(before, ctx).network


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
        'options={"maxpool": "relu"})`: maxpool_to_relu turns the MaxPool, and the ReLU '
        "before it, into a tree over the window elements the bounds leave as possible "
        "maxima (`passes/max_prune.py`). Counts: original (with MaxPool) -> full tree "
        "(`maxpool_prune=False`: every window a depthwise-conv/ReLU tree) -> pruned (the "
        "final network; ReLUs are the Relu elements of its graph). Windows: left with one "
        "element (a selection) / the constant zero / a tree. Removed: window elements "
        "proved dominated by intervals / by CROWN on their difference (each a `dominated` "
        "certificate entry). Diff: final network against the original ONNX file, both in "
        f"onnxruntime on {samples:,} points of the box"
        + (
            " (20,000 by default: 100,000 take ~100 s per spec here; `--all` runs them)"
            if samples < SAMPLES_ALL
            else ""
        )
        + ", absolute and relative to max(1, |y|) (tolerance "
        f"{TOLERANCE:g}), and PGD (10 starts, 50 steps). Latency: onnxruntime, 1 thread, "
        f"median of {rows[0]['latency_batch1']['rounds']} (batch 1) and "
        f"{rows[0]['latency_batch64']['rounds']} (batch 64) interleaved calls; ratio = "
        "final / original file.",
        "",
        "| spec | ReLUs | params | FLOPs | MaxPool left | windows: one / zero / tree | "
        "removed: interval / crown | prune s | max abs diff | max rel diff | PGD diff | "
        "batch 1: original us | final us | ratio | batch 64: original us | final us | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, w, rm = r["check"], r["windows"], r["removed"]
        l1, l64 = r["latency_batch1"], r["latency_batch64"]
        tree = w["windows"] - w["one_element"]
        lines.append(
            f"| {r['spec']} | {_three(r, 'relus')} | {_three(r, 'params')} | "
            f"{_three(r, 'flops')} | {r['final']['maxpools']} | {w['one_element'] - w['zero']}"
            f" / {w['zero']} / {tree} | {rm['interval']} / {rm['crown']} | "
            f"{r['maxpool_seconds']:.1f} | {c['max_abs_diff']:.1e} | "
            f"{c['max_rel_diff']:.1e} | {c['pgd_max_abs_diff']:.1e} | {l1['a_us']:.0f} | "
            f"{l1['b_us']:.0f} | {l1['ratio']:.2f} | {l64['a_us']:.0f} | {l64['b_us']:.0f} | "
            f"{l64['ratio']:.2f} |"
        )
    worst = max(max(r["check"]["max_rel_diff"], r["check"]["pgd_max_abs_diff"]) for r in rows)
    worst_abs = max(r["check"]["max_abs_diff"] for r in rows)
    relus = [r["final"]["relus"] for r in rows]
    lines += [
        "",
        f"MaxPool fully rewritten in every row: {all(r['final']['maxpools'] == 0 for r in rows)}. "
        f"Worst difference {worst:.1e} relative, {worst_abs:.1e} absolute "
        f"({'within' if max(worst, worst_abs) <= TOLERANCE else 'OUTSIDE'} {TOLERANCE:g}). "
        "ReLUs: original "
        f"{rows[0]['original']['relus']}, full tree {rows[0]['maxpool_rewritten']['relus']}, "
        f"pruned {min(relus)}-{max(relus)}.",
    ]
    reasons = sorted({why for r in rows for why in r["skipped"].values()})
    if reasons:
        lines += ["", "stable_relu left these ReLU layers in place:", ""]
        lines += [f"- {why}" for why in reasons]
    return lines
