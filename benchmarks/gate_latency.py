"""Gate latency in the deployed bundle (issue 6): gated vs ungated, TVM, one thread.

For every instance of the gates benchmark (``results/gates.json``: the violated
public instances, plus the props 1-4 compile), the gated network is compiled
(``compile_model``, gates proved) and lowered with TVM, symbolic batch, untuned,
as the default compile does: the gated ``model.onnx`` (gates fused into the last
layer's kernel, ``compiler/backends/gate_fusion.py``) and the same model with its
gates stripped, the latter twice: as the compiler builds it and through the gated
library's pre-fused pipeline (like with like).  All are loaded through
``relugate.runtime`` (input and domain checks, gate telemetry included) and called
on the same inputs from the domain, in interleaved rounds in one process; each
figure is the minimum over rounds of the mean time per call.  Onnxruntime's ratio
for the same pair is shown beside it (one intra-op thread).

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.gate_latency [--limit N] [--rounds 9]

Writes benchmarks/results/gate_latency.json and gate_latency.md.
"""

from __future__ import annotations

import os

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks.meta import run_meta
from benchmarks.tvm_latency import make_bundle, timed_rounds
from relugate.compiler.backends.tvm import lower, prepare
from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.gates_onnx import strip_gates
from relugate.compiler.onnx_run import session

CLOCK_WORDS = {"wall": "elapsed time", "cpu": "the thread's CPU time, robust to other load"}
CLOCK_HELP = "wall: elapsed time per call; cpu: the thread's CPU time (robust to a busy machine)"
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results"
BATCHES = (1, 1024)


def instances() -> list[tuple[Path, list[Path]]]:
    """(network, specs) of every row of the gates benchmark, then its multi-property case."""
    data = json.loads((RESULTS / "gates.json").read_text())
    found = []
    for row in [*data["rows"], *([data["multi_property"]] if data["multi_property"] else [])]:
        net = next(SHARED.rglob(row["network"]))
        found.append((net, [next(net.parent.rglob(s)) for s in row["specs"]]))
    return found


def _ort_runner(model: onnx.ModelProto, x: np.ndarray) -> Callable[[], Any]:
    batched, specs = prepare(model, None, counts=False)  # the library's counting is TVM's
    sess = session(batched)
    feed = {specs[0].name: x}
    return lambda: sess.run(None, feed)


def measure(
    net: Path, specs: list[Path], work: Path, rounds: int, clock: str = "wall"
) -> dict[str, Any]:
    import relugate.runtime as rt

    out = work / "compiled"
    options = CompileOptions(out_dir=out, overwrite=True, gate_timeout=60.0)
    report = compile_model(net, options, specs=specs).report
    gated = onnx.load(str(out / "model.onnx"))
    ungated = strip_gates(gated)
    domain = report["domain"]
    box = (np.asarray(domain["lo"]), np.asarray(domain["hi"]))
    variants = (("gated", gated, None), ("ungated", ungated, None), ("same", ungated, True))
    bundles = {
        name: rt.load(make_bundle(lower(model, "llvm", prefuse=fuse), model, box, work / name))
        for name, model, fuse in variants
    }
    row: dict[str, Any] = {
        "network": net.name,
        "specs": [s.name for s in specs],
        "gates": len(report["gates"]),
        "gate_nodes": sum(n.name.startswith("relugate_gate/") for n in gated.graph.node),
    }
    rng = np.random.default_rng(0)
    sample = bundles["gated"].sample_shape
    for batch in BATCHES:
        x = box[0] + rng.random((batch, box[0].size)) * (box[1] - box[0])
        x = x.astype(np.float32).reshape(batch, *sample)
        fns: dict[str, Callable[[], Any]] = {
            "tvm_ungated": lambda b=bundles["ungated"], x=x: b.run(x),
            "tvm_ungated_prefused": lambda b=bundles["same"], x=x: b.run(x),
            "tvm_gated": lambda b=bundles["gated"], x=x: b.run(x),
            "ort_ungated": _ort_runner(ungated, x),
            "ort_gated": _ort_runner(gated, x),
        }
        samples = timed_rounds(fns, rounds, clock)
        us = {k: min(v) * 1e6 for k, v in samples.items()}
        fired = bundles["gated"].run_detailed(x).gate_fired
        row[f"b{batch}"] = {
            "us_per_call": {k: round(v, 2) for k, v in us.items()},
            "tvm_ratio": round(us["tvm_gated"] / us["tvm_ungated"], 3),
            "tvm_ratio_same_pipeline": round(us["tvm_gated"] / us["tvm_ungated_prefused"], 3),
            "ort_ratio": round(us["ort_gated"] / us["ort_ungated"], 3),
            "rows_fired": int(fired.sum()),
        }
    return row


def _us(cell: dict[str, Any]) -> str:
    us = cell["us_per_call"]
    return f"{us['tvm_ungated']} / {us['tvm_ungated_prefused']} / {us['tvm_gated']}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def med(key: str, batch: int) -> float:
        return statistics.median(r[f"b{batch}"][key] for r in rows)

    lines = [
        "# Gate latency in the bundle (TVM, gated vs ungated)",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}; one thread, "
        f"{meta['rounds']} interleaved rounds per batch size, minimum of the per-round mean "
        f"({CLOCK_WORDS[meta.get('clock', 'wall')]}); "
        "bundles built as the default compile builds them (symbolic batch, untuned) and "
        "called through `relugate.runtime` (checks and gate telemetry included). Inputs "
        "uniform in the compile domain, load average "
        f"{meta.get('load_average', float('nan')):.1f} at the end. The machine's other work "
        "hits every engine alike within a round; single figures still move by several "
        "percent between runs.",
        "",
        f"{len(rows)} compiles: TVM gated/ungated median {med('tvm_ratio', 1):.3f} at batch 1, "
        f"{med('tvm_ratio', 1024):.3f} at batch 1024; against the ungated network built "
        f"through the same pre-fused pipeline as the gated one: "
        f"{med('tvm_ratio_same_pipeline', 1):.3f} / {med('tvm_ratio_same_pipeline', 1024):.3f} "
        f"(onnxruntime: {med('ort_ratio', 1):.3f} / {med('ort_ratio', 1024):.3f}). Ungated "
        "bundles are built by `tvm.compile`'s own pipeline (the pre-fused one is faster at "
        "batch 1 but slower at batch 1024 for them), gated ones pre-fused "
        "(`compiler/backends/gate_fusion.py`).",
        "",
        "| network | specs | gates | TVM b1 us (ungated / same pipeline / gated) | "
        "TVM ratio b1 (same pipeline) | TVM b1024 us | TVM ratio b1024 (same pipeline) | "
        "ORT ratio b1 | ORT ratio b1024 | rows fired b1024 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b1, bk = r["b1"], r["b1024"]
        lines.append(
            f"| {r['network']} | {', '.join(r['specs'])} | {r['gates']} | {_us(b1)} | "
            f"{b1['tvm_ratio']:.3f} ({b1['tvm_ratio_same_pipeline']:.3f}) | {_us(bk)} | "
            f"{bk['tvm_ratio']:.3f} ({bk['tvm_ratio_same_pipeline']:.3f}) | "
            f"{b1['ort_ratio']:.3f} | {bk['ort_ratio']:.3f} | {bk['rows_fired']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N compiles")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help=CLOCK_HELP)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N compiles")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="relugate-gate-latency-") as tmp:
        chosen = instances()[args.skip :][: args.limit]
        for i, (net, specs) in enumerate(chosen):
            rows.append(measure(net, specs, Path(tmp) / str(i), args.rounds, args.clock))
            r = rows[-1]
            print(
                f"{r['network']} {','.join(r['specs'])}: TVM b1 {r['b1']['tvm_ratio']:.3f} "
                f"({r['b1']['tvm_ratio_same_pipeline']:.3f}) b1024 {r['b1024']['tvm_ratio']:.3f} "
                f"({r['b1024']['tvm_ratio_same_pipeline']:.3f}); ORT {r['b1']['ort_ratio']:.3f} "
                f"{r['b1024']['ort_ratio']:.3f}",
                flush=True,
            )
    meta = run_meta(
        rounds=args.rounds, threads=1, clock=args.clock, load_average=os.getloadavg()[0]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gate_latency.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / "gate_latency.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
