"""Compression benchmark: ``stable_relu`` in Serra et al.'s setting and on ACAS Xu.

1. Serra, Kumar, Ramalingam, "Lossless Compression of Deep Neural Networks"
   (CPAIOR 2020), Table 1 setting: 2-hidden-layer MLPs of width 25/50/100,
   trained (numpy, Adam, seeded) on scikit-learn's digits (8x8, pixels scaled
   to [0, 1]) with and without an l1 penalty on the weights; domain = the
   pixel box [0, 1]^64.  ReLUs removed by each analysis (crown, lp, milp)
   beside Serra et al.'s figures (MNIST: 22% / 29.4% / 30.8% with l1, 0%
   without).
2. ACAS Xu (../shared/benchmarks/acasxu), each network with each property's
   input box: ReLUs, parameters and FLOPs removed, and onnxruntime latency of
   the reduced against the unreduced network at batch 1, side by side.

Every reduced network is checked against its original: the largest output
difference over 10,000 samples from the box, both run in onnxruntime, and
the largest PGD finds (float64, 10 starts).

    python -m benchmarks.compression [--all] [--seeds N]

``--all``: every ACAS Xu network, and the LP analysis on every property.
Writes benchmarks/results/compression.json and compression.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console

from benchmarks.frontend import latency_ratio
from relugate import __version__
from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Dense, Layer, Relu
from relugate.compiler.network import Network, TensorSpec
from relugate.compiler.onnx_run import run_batch, run_network
from relugate.compiler.pipeline import Pipeline, default_passes
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.base import PassContext
from relugate.passes.stable_relu import StableRelu

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ACAS = ROOT.parent / "shared" / "benchmarks" / "acasxu"
SERRA = {25: 22.0, 50: 29.4, 100: 30.8}
"""Neurons removed (%) with l1 in Serra et al. (CPAIOR 2020), Table 1; 0% without."""
WIDTHS = (25, 50, 100)
L1 = (0.0, 1e-4, 1e-3, 3e-3)
EPOCHS = 150
CHECK_SAMPLES = 10_000
ACAS_DEFAULT = ("1_1", "2_1", "3_3", "4_2", "5_3")
LP_PROPS_DEFAULT = (3, 4)


# --- training ----------------------------------------------------------------


def digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, pixels / 16, split 80/20 by ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data / 16.0, data.target
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def forward(ws: list[np.ndarray], bs: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    hs = [x]
    for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
        z = hs[-1] @ w.T + b
        hs.append(np.maximum(z, 0) if k < len(ws) - 1 else z)
    return hs


def gradients(
    ws: list[np.ndarray], hs: list[np.ndarray], y: np.ndarray, l1: float
) -> list[np.ndarray]:
    """Gradients of mean cross-entropy + l1 * sum |W| (weights first, then biases)."""
    p = np.exp(hs[-1] - hs[-1].max(axis=1, keepdims=True))
    g = p / p.sum(axis=1, keepdims=True)
    g[np.arange(len(y)), y] -= 1
    g /= len(y)
    gw, gb = [np.empty(0)] * len(ws), [np.empty(0)] * len(ws)
    for k in reversed(range(len(ws))):
        gw[k], gb[k] = g.T @ hs[k] + l1 * np.sign(ws[k]), g.sum(axis=0)
        g = (g @ ws[k]) * (hs[k] > 0)
    return gw + gb


def train_mlp(width: int, l1: float, seed: int) -> tuple[Network, float]:
    """64-width-width-10 ReLU MLP (He init, Adam 1e-3, batch 32); the network and its
    test accuracy."""
    x, y, x_test, y_test = digits(seed)
    rng = np.random.default_rng(seed)
    sizes = [64, width, width, 10]
    ws = [rng.normal(0, np.sqrt(2 / a), (b, a)) for a, b in pairwise(sizes)]
    bs = [np.zeros(b) for b in sizes[1:]]
    params = ws + bs
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    t = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 32):
            batch = order[i : i + 32]
            grads = gradients(ws, forward(ws, bs, x[batch]), y[batch], l1)
            t += 1
            for p, g, mk, vk in zip(params, grads, m, v, strict=True):
                mk *= 0.9
                mk += 0.1 * g
                vk *= 0.999
                vk += 0.001 * g * g
                p -= 1e-3 * (mk / (1 - 0.9**t)) / (np.sqrt(vk / (1 - 0.999**t)) + 1e-8)
    accuracy = float(np.mean(forward(ws, bs, x_test)[-1].argmax(axis=1) == y_test))
    layers: list[Layer] = []
    for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
        layers += [Dense(f"fc{k}", weight=w, bias=b), Relu(f"relu{k}")]
    io = (TensorSpec("x", (1, 64), True, "N"), TensorSpec("y", (1, 10), True, "N"))
    return Network(*io, tuple(layers[:-1])), accuracy


# --- compress and check ------------------------------------------------------------


def compress(net: Network, box: Box, method: str) -> tuple[Network, dict[str, Any]]:
    t0 = time.perf_counter()
    ctx = PassContext(domain=box, options={"stability": method, "stability_time_limit": 120.0})
    result = StableRelu().run(net, ctx)
    report = result.report
    before, after = net.stats(), result.network.stats()
    layers = report.get("layers", {}).values()
    return result.network, {
        "method": method,
        "seconds": round(time.perf_counter() - t0, 3),
        "rounds": report.get("rounds", 0),
        "before": before,
        "after": after,
        "relus_removed": before["relus"] - after["relus"],
        "removed_pct": round(100 * (before["relus"] - after["relus"]) / before["relus"], 2),
        "inactive": sum(r["inactive_removed"] for r in layers),
        "dependent": sum(r.get("active_dependent_removed", 0) for r in layers),
        "relu_layers_dropped": sum(bool(r.get("relu_dropped")) for r in layers),
        "inactive_claims": sorted(
            (e.where["layer"], e.where["index"])
            for e in result.certificate
            if e.claim == "inactive"
        ),
    }


def check(before: Network, after: Network, box: Box, original: Path | None = None) -> dict:
    """Largest |difference| over samples in onnxruntime (the original file where given)
    and where PGD finds the two furthest apart."""
    x = np.concatenate(
        [box.corners_and_center(), box.sample(CHECK_SAMPLES, np.random.default_rng(0))]
    )
    ref = run_network(before, x) if original is None else run_batch(str(original), before.input, x)
    gap = float(np.abs(ref - run_network(after, x)).max())
    pgd = max_difference(before, after, box, np.random.default_rng(1), starts=10, steps=50)
    return {"samples": len(x), "max_abs_diff": gap, "pgd_max_abs_diff": pgd.value}


# --- the two studies ---------------------------------------------------------------


def digits_rows(seeds: int, console: Console) -> list[dict[str, Any]]:
    box = Box(np.zeros(64), np.ones(64))
    rows = []
    for seed in range(seeds):
        for l1 in L1:
            for width in WIDTHS:
                net, accuracy = train_mlp(width, l1, seed)
                row: dict[str, Any] = {"width": width, "l1": l1, "seed": seed}
                row["test_accuracy"] = accuracy
                for method in ("crown", "lp", "milp"):
                    reduced, row[method] = compress(net, box, method)
                    row[method]["check"] = check(net, reduced, box)
                milp = set(map(tuple, row["milp"]["inactive_claims"]))
                row["crown_lp_inactive_confirmed_by_milp"] = all(
                    set(map(tuple, row[m]["inactive_claims"])) <= milp for m in ("crown", "lp")
                )
                console.print(f"digits w={width} l1={l1} seed={seed}: {summary(row)}")
                rows.append(row)
    return rows


def summary(row: dict[str, Any]) -> str:
    return ", ".join(f"{m} {row[m]['removed_pct']}%" for m in ("crown", "lp", "milp"))


def normalized(model: Path) -> Network:
    net = import_network(load_model(model))
    passes = [p for p in default_passes() if p.name != "stable_relu"]
    return Pipeline(passes).run(net, PassContext()).network


def acas_rows(nets: list[str], lp_props: tuple[int, ...], console: Console) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in nets:
            model = ACAS / f"ACASXU_run2a_{name}_batch_2000.onnx"
            net = normalized(model)
            base = Path(tmp) / f"{name}.onnx"
            wide = Path(tmp) / f"{name}_n.onnx"
            onnx.save(to_onnx(net), str(base))
            onnx.save(to_onnx(net, batch="N"), str(wide))
            for prop in (1, 2, 3, 4):
                box = read_vnnlib(ACAS / f"prop_{prop}.vnnlib").domain()
                for method in ("crown", "lp") if prop in lp_props else ("crown",):
                    reduced, row = compress(net, box, method)
                    row.update(network=name, prop=prop, check=check(net, reduced, box, model))
                    row["latency_batch1"] = latency_ratio(str(base), to_onnx(reduced), (1, 1, 1, 5))
                    row["latency_batch1000"] = latency_ratio(
                        str(wide), to_onnx(reduced, batch="N"), (1000, 1, 1, 5)
                    )
                    console.print(
                        f"acas {name} prop {prop} {method}: relus {row['before']['relus']} -> "
                        f"{row['after']['relus']}, diff {row['check']['max_abs_diff']:.2g}"
                    )
                    rows.append(row)
    return rows


# --- output ------------------------------------------------------------------------


def digits_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| width | l1 | seed | test acc | ReLUs | removed: crown | lp | milp | Serra et al. | "
        "milp: inactive / dependent | max diff (ort) | PGD diff | milp s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        serra = f"{SERRA[r['width']]}%" if r["l1"] else "0%"
        milp = r["milp"]
        worst = max(r[m]["check"]["max_abs_diff"] for m in ("crown", "lp", "milp"))
        pgd = max(r[m]["check"]["pgd_max_abs_diff"] for m in ("crown", "lp", "milp"))
        lines.append(
            f"| {r['width']} | {r['l1']:g} | {r['seed']} | {r['test_accuracy']:.3f} | "
            f"{milp['before']['relus']} | {r['crown']['removed_pct']}% | "
            f"{r['lp']['removed_pct']}% | {milp['removed_pct']}% | {serra} | "
            f"{milp['inactive']} / {milp['dependent']} | {worst:.1e} | {pgd:.1e} | "
            f"{milp['seconds']:.1f} |"
        )
    return lines


def acas_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
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
            f"{lat['original_us']:.1f} | {lat['normalized_us']:.1f} | {lat['ratio']:.2f} | "
            f"{big:.2f} |"
        )
    return lines


def markdown(digits_: list[dict], acas: list[dict], meta: dict[str, Any]) -> str:
    lines = [
        "# Compression: stable_relu",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}, {meta['seconds']:.0f} s.",
        "",
        "## Serra et al. (CPAIOR 2020) Table 1 setting, on scikit-learn digits",
        "",
        f"2 hidden layers, Adam {EPOCHS} epochs, l1 penalty on the weights; domain [0, 1]^64. "
        "Removed: ReLUs gone (inactive units deleted, dependent active units folded into "
        "their basis, all-active layers dropped). Serra et al. measured MNIST nets, so "
        "their column is a reference, not the same networks. Diffs: reduced vs original, "
        f"{CHECK_SAMPLES} box samples in onnxruntime, and PGD; worst over the 3 analyses.",
        "",
        *digits_table(digits_),
        "",
        "## ACAS Xu, each property's input box",
        "",
        "Latency: onnxruntime, 1 thread, median of 2000 interleaved calls at batch 1 "
        "and at batch 1000; ratio = reduced / unreduced (both exported by relugate). "
        "Diff: reduced against the original ONNX file.",
        "",
        *acas_table(acas),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every ACAS Xu net, LP everywhere")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per digits net")
    args = parser.parse_args(argv)
    console, t0 = Console(), time.perf_counter()
    rows = digits_rows(args.seeds, console)
    if ACAS.is_dir():
        nets = sorted(p.name[13:-16] for p in ACAS.glob("ACASXU_run2a_*_batch_2000.onnx"))
        chosen = nets if args.all else [n for n in ACAS_DEFAULT if n in nets]
        acas = acas_rows(chosen, (1, 2, 3, 4) if args.all else LP_PROPS_DEFAULT, console)
    else:
        console.print(f"no ACAS Xu networks at {ACAS}; that part is skipped")
        acas = []
    meta = {
        "relugate": __version__,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - t0,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "digits": rows, "acasxu": acas}
    (RESULTS / "compression.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "compression.md").write_text(markdown(rows, acas, meta))
    console.print((RESULTS / "compression.md").read_text(), markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
