"""ACAS Xu with each property's input box: what ``stable_relu`` removes, the check
against the original ONNX file and onnxruntime latency of reduced vs unreduced.

The original files declare a batch of 1; the check runs a copy whose declared
batch dimension is symbolic (``symbolic_batch``: nodes untouched), so the
100,000 samples go through in a few batched calls, once per (network,
property), shared by the analyses.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console

from benchmarks.compression import (
    SHARED,
    batched,
    compress,
    interleaved_latency,
    sample_gap,
    symbolic_batch,
)
from relugate.compiler.exporter import to_onnx
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.network import Network
from relugate.compiler.pipeline import Pipeline, default_passes
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.base import PassContext

ACAS = SHARED / "acasxu"
NETS_DEFAULT = ("1_1", "2_1", "3_3", "4_2", "5_3")
LP_PROPS_DEFAULT = (3, 4)
ROUNDS_1, ROUNDS_1000 = 2000, 300


def normalized(model: Path) -> Network:
    net = import_network(load_model(model))
    passes = [p for p in default_passes() if p.name != "stable_relu"]
    return Pipeline(passes).run(net, PassContext()).network


def model_path(name: str) -> Path:
    return ACAS / f"ACASXU_run2a_{name}_batch_2000.onnx"


def run(every: bool, console: Console) -> list[dict[str, Any]]:
    if not ACAS.is_dir():
        console.print(f"no ACAS Xu networks at {ACAS}; that part is skipped")
        return []
    found = sorted(p.name[13:-16] for p in ACAS.glob("ACASXU_run2a_*_batch_2000.onnx"))
    nets = found if every else [n for n in NETS_DEFAULT if n in found]
    lp_props = (1, 2, 3, 4) if every else LP_PROPS_DEFAULT
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in nets:
            rows += one_net(name, lp_props, Path(tmp), console)
    return rows


def one_net(name: str, lp_props: tuple[int, ...], tmp: Path, console: Console) -> list[dict]:
    model = model_path(name)
    original = symbolic_batch(model)
    net = normalized(model)
    base, wide = tmp / f"{name}.onnx", tmp / f"{name}_n.onnx"
    onnx.save(to_onnx(net), str(base))
    onnx.save(batched(net), str(wide))
    x1 = np.random.default_rng(0).random((1, 1, 1, 5), dtype=np.float32)
    x1000 = np.random.default_rng(0).random((1000, 1, 1, 5), dtype=np.float32)
    rows = []
    for prop in (1, 2, 3, 4):
        box = read_vnnlib(ACAS / f"prop_{prop}.vnnlib").domain()
        for method in ("crown", "split", "lp") if prop in lp_props else ("crown", "split"):
            reduced, row = compress(net, box, method)
            gap = sample_gap(original, batched(reduced), box, net.input.sample_shape)
            pgd = max_difference(net, reduced, box, np.random.default_rng(1), starts=10, steps=50)
            row.update(network=name, prop=prop, check={**gap, "pgd_max_abs_diff": pgd.value})
            row["latency_batch1"] = interleaved_latency(str(base), to_onnx(reduced), x1, ROUNDS_1)
            row["latency_batch1000"] = interleaved_latency(
                str(wide), batched(reduced), x1000, ROUNDS_1000
            )
            del row["claims"]
            console.print(
                f"acas {name} prop {prop} {method}: relus {row['before']['relus']} -> "
                f"{row['after']['relus']}, diff {gap['max_abs_diff']:.2g}, "
                f"batch-1 ratio {row['latency_batch1']['ratio']:.2f}"
            )
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["## ACAS Xu", "", "Skipped: no networks at ../shared/benchmarks/acasxu."]
    samples = rows[0]["check"]["samples"]
    lines = [
        "## ACAS Xu, each property's input box",
        "",
        f"Diff: reduced network against the original ONNX file, both in onnxruntime on "
        f"{samples:,} points of the box (the original with its declared batch dimension "
        "made symbolic, nodes untouched), and PGD (10 starts, 50 steps). Latency: "
        f"onnxruntime, 1 thread, median of {ROUNDS_1} interleaved calls at batch 1 and "
        f"{ROUNDS_1000} at batch 1000; ratio = reduced / unreduced (both exported by "
        "relugate).",
        "",
        "| net | prop | analysis | ReLUs | params | FLOPs | inactive / dependent | rounds | "
        "s | max diff (ort) | PGD diff | batch 1: unreduced us | reduced us | ratio | "
        "batch 1000: ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a, lat, c = r["before"], r["after"], r["latency_batch1"], r["check"]
        big = r["latency_batch1000"]["ratio"]
        lines.append(
            f"| {r['network']} | {r['prop']} | {r['method']} | {b['relus']} -> {a['relus']} | "
            f"{b['params']} -> {a['params']} | {b['flops']} -> {a['flops']} | "
            f"{r['inactive']} / {r['dependent']} | {r['rounds']} | {r['seconds']:.2f} | "
            f"{c['max_abs_diff']:.1e} | {c['pgd_max_abs_diff']:.1e} | "
            f"{lat['a_us']:.1f} | {lat['b_us']:.1f} | {lat['ratio']:.2f} | {big:.2f} |"
        )
    worst = max(r["check"]["max_abs_diff"] for r in rows)
    pgd = max(r["check"]["pgd_max_abs_diff"] for r in rows)
    lines += [
        "",
        f"Largest difference over all rows: {worst:.1e} sampled, {pgd:.1e} by PGD "
        f"({'below' if max(worst, pgd) < 1e-5 else 'NOT below'} 1e-5).",
    ]
    return lines
