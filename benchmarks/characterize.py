"""Input characterization benchmark: how much of the input box is proved safe?

On the ACAS Xu prop 2 instances that are violated (``verify_acasxu.json``):
``characterize`` (CROWN with optimized slopes, bound-guided bisection, largest
box first) for ``--seconds`` of splitting, then activation patterns, next to
a plain interval-bisection baseline (interval bounds, widest relative input
first) and an ablation (the same CROWN bounds, widest relative input first),
each with the same splitting budget.  Then the claims are attacked:

* 1,000,000 float32 samples drawn inside the proved-safe boxes (half spread by
  volume, half spread evenly over the boxes) run in onnxruntime on the original
  graph (batch axis made symbolic, nothing else changed): no output may be unsafe;
* every counterexample is re-run in onnxruntime on the original file: each
  must lie in the box and be unsafe;
* 100,000 samples of the box: those inside a proved pattern's region must be
  safe in onnxruntime.

    python -m benchmarks.characterize [--seconds 60] [--only 1_2,5_3] [--samples N]

Writes benchmarks/results/characterize.json and characterize.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.meta import run_meta
from relugate.compiler.characterize_run import characterize_model
from relugate.compiler.fidelity import run_any
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.onnx_run import run_batch
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.characterize import SAFE, Characterization, inside32
from relugate.passes.analysis.characterize_patterns import pattern_holds
from relugate.passes.analysis.steps import steps_of

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ACAS = Path(os.environ.get("RELUGATE_BENCHMARKS", ROOT.parent / "shared" / "benchmarks")) / "acasxu"
FALLBACK = ["1_2", "1_3", "1_4", "1_5", "1_6", "2_1", "5_3"]
"""The violated prop 2 networks (verify_acasxu.md), when its JSON is absent."""


def networks() -> list[str]:
    table = RESULTS / "verify_acasxu.json"
    if not table.is_file():
        return FALLBACK
    rows = json.loads(table.read_text())["rows"]
    names = [
        r["network"].removeprefix("ACASXU_run2a_").removesuffix("_batch_2000.onnx")
        for r in rows
        if r["spec"] == "prop_2.vnnlib" and r["verdict"] == "violated"
    ]
    return sorted(names) or FALLBACK


def safe_samples(
    state: Characterization, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 samples of the safe boxes, and whether each lies in the box it was drawn in."""
    lv = state.leaves
    safe = np.flatnonzero(lv.status == SAFE)
    if not safe.size:
        return np.zeros((0, lv.lo.shape[1]), np.float32), np.zeros(0, bool)
    vol = state.volumes()[safe]
    pick = np.concatenate(
        [rng.choice(safe, n // 2, p=vol / vol.sum()), rng.choice(safe, n - n // 2)]
    )
    lo, hi = lv.lo[pick], lv.hi[pick]
    x = inside32(lo + rng.random(lo.shape) * (hi - lo), lo, hi)
    x64 = x.astype(np.float64)
    return x, np.all((x64 >= lo) & (x64 <= hi), axis=1)


def attack(model: Path, spec: Path, state: Characterization, data: dict[str, Any], n: int) -> dict:
    rng = np.random.default_rng(0)
    net = import_network(load_model(model))
    case = read_vnnlib(spec).cases[0]
    x, inside = safe_samples(state, n, rng)
    unsafe = 0
    for s in range(0, len(x), 100_000):
        y = run_any(str(model), net.input, x[s : s + 100_000]).astype(np.float64)
        unsafe += int(case.is_unsafe(y).sum())
    cex = [b["counterexample"] for b in data["boxes"] if b["status"] == "unsafe"]
    cex_ok = 0
    if cex:
        xs = np.array([c["input"] for c in cex], np.float32)
        ys = run_batch(str(model), net.input, xs).astype(np.float64)
        cex_ok = int((case.is_unsafe(ys) & case.box.contains(xs.astype(np.float64))).sum())
    return {
        "safe_samples": len(x),
        "safe_samples_outside_boxes": int((~inside).sum()),
        "safe_samples_unsafe": unsafe,
        "counterexamples": len(cex),
        "counterexamples_confirmed": cex_ok,
        **attack_patterns(model, net, case, data, rng),
    }


def attack_patterns(model: Path, net: Any, case: Any, data: dict, rng: np.random.Generator) -> dict:
    steps = steps_of(net)
    items = data["patterns"].get("items", []) if data["patterns"] else []
    sizes = [d["neurons"] for d in data["relu_layers"]]
    starts = np.cumsum([0, *sizes])
    x = case.box.sample(100_000, rng)
    inside = np.zeros(len(x), bool)
    for p in items:
        signs = np.zeros(starts[-1], np.int8)
        for layer, idx, sign in p["neurons"]:
            signs[starts[layer] + idx] = 1 if sign == "+" else -1
        inside |= pattern_holds(steps, x, signs)
    unsafe = 0
    if inside.any():
        x32 = inside32(x[inside], case.box.lo, case.box.hi)
        y = run_any(str(model), net.input, x32).astype(np.float64)
        unsafe = int(case.is_unsafe(y).sum())
    return {"pattern_samples": int(inside.sum()), "pattern_samples_unsafe": unsafe}


def run_one(name: str, seconds: float, pattern_seconds: float, samples: int) -> dict[str, Any]:
    model = ACAS / f"ACASXU_run2a_{name}_batch_2000.onnx"
    spec = ACAS / "prop_2.vnnlib"
    t0 = time.monotonic()
    state, data = characterize_model(
        model, spec, None, timeout=seconds, pattern_timeout=pattern_seconds
    )
    wall = time.monotonic() - t0
    base, _ = characterize_model(model, spec, None, timeout=seconds, method="interval")
    widest, _ = characterize_model(
        model, spec, None, timeout=seconds, pattern_timeout=0, method="crown-widest"
    )
    items = data["patterns"].get("items", []) if data["patterns"] else []
    summary = data["patterns"]["cases"][0] if data["patterns"].get("cases") else {}
    return {
        "network": name,
        "seconds": seconds,
        "wall_seconds": round(wall, 1),
        "safe": data["volume"]["safe"],
        "unsafe": data["volume"]["unsafe"],
        "proved_unsafe": data["volume"]["proved_unsafe"],
        "undecided": data["volume"]["undecided"],
        "boxes": len(data["boxes"]),
        "boxes_processed": data["boxes_processed"],
        "baseline_safe": base.fractions()["safe"],
        "baseline_boxes_processed": base.processed,
        "crown_widest_safe": widest.fractions()["safe"],
        "patterns": len(items),
        "smallest_pattern": min((p["size"] for p in items), default=None),
        "pattern_union_estimate": summary.get("union_estimate"),
        **attack(model, spec, state, data, samples),
    }


def _pct(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1e}" if 0 < 100 * v < 0.001 else f"{100 * v:.3f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = ", ".join(f"{k} {v}" for k, v in meta.items())
    lines = [
        "# Input characterization (ACAS Xu prop 2, violated instances)",
        "",
        f"{head}. Volume shares of the input box in %. `relugate characterize` vs plain "
        "interval bisection (interval bounds, widest relative input first) and, as an "
        "ablation, the same CROWN bounds bisecting the widest relative input, all with the "
        "same splitting budget; `patterns`: activation patterns proved to imply the "
        "property over the whole box, their union's share estimated from 10,000 samples. "
        "Soundness: samples drawn in the safe boxes run in onnxruntime (unsafe must be 0); "
        "counterexamples re-run on the original file (confirmed must equal found); samples "
        "inside a pattern's region (unsafe must be 0).",
        "",
        "| network | safe % | baseline safe % | CROWN widest-first safe % | unsafe % (cex boxes) "
        "| undecided % | boxes "
        "| patterns (smallest) | pattern region % | safe samples | unsafe | cex confirmed "
        "| pattern samples unsafe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {_pct(r['safe'])} | {_pct(r['baseline_safe'])} "
            f"| {_pct(r['crown_widest_safe'])} "
            f"| {_pct(r['unsafe'])} | {_pct(r['undecided'])} | {r['boxes']} "
            f"| {r['patterns']} ({r['smallest_pattern']}) | {_pct(r['pattern_union_estimate'])} "
            f"| {r['safe_samples']:,} | {r['safe_samples_unsafe']} "
            f"| {r['counterexamples_confirmed']}/{r['counterexamples']} "
            f"| {r['pattern_samples_unsafe']} of {r['pattern_samples']:,} |"
        )
    wins = sum(r["safe"] > r["baseline_safe"] for r in rows)
    abl = sum(r["safe"] > r["crown_widest_safe"] for r in rows)
    lines += [
        "",
        f"Larger proved region than the interval baseline on {wins} of {len(rows)} instances, "
        f"than CROWN with widest-first bisection on {abl} of {len(rows)}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="splitting budget")
    parser.add_argument("--pattern-seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--only", help="comma-separated networks, e.g. 1_2,5_3")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite the .md from the .json"
    )
    args = parser.parse_args(argv)
    console = Console()
    if args.markdown_only:
        saved = json.loads((RESULTS / "characterize.json").read_text())
        (RESULTS / "characterize.md").write_text(markdown(saved["rows"], saved["meta"]))
        return 0
    names = args.only.split(",") if args.only else networks()
    rows = []
    for name in names:
        row = run_one(name, args.seconds, args.pattern_seconds, args.samples)
        rows.append(row)
        console.print(json.dumps(row), highlight=False)
    meta = run_meta(
        seconds=args.seconds, pattern_seconds=args.pattern_seconds, samples=args.samples
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "characterize.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / "characterize.md").write_text(markdown(rows, meta))
    bad = [
        r["network"]
        for r in rows
        if r["safe_samples_unsafe"]
        or r["pattern_samples_unsafe"]
        or r["safe_samples_outside_boxes"]
        or r["counterexamples_confirmed"] != r["counterexamples"]
    ]
    if bad:
        console.print(f"soundness check FAILED on {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
