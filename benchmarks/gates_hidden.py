"""Hidden-gate benchmark: the violated instances repaired by a clamp on a hidden layer.

For each violated instance of ``benchmarks/results/verify_*.json`` whose spec matches
``--specs`` (default: ACAS Xu prop 2 and test_sat): ``compile --gate-layer hidden``
(the hidden layer and region that keep most original-safe samples, proved by
``verify_model`` on the tail), ``relugate check`` on the bundle, the attack of
``gates_measure`` on the gated model (1,000,000 samples + PGD from 100 starts per
unsafe polytope) and the latency of the gate in onnxruntime (gated vs the same
file with the gate stripped; with ``--add-clamp-only`` on a finished run, also the
clamp without the ungated tail copy that feeds the runtime's firing counts).  The
output gates' fidelity on the same instance, from ``gates.json`` (the output-gate
benchmark), is shown beside it.

    OPENBLAS_NUM_THREADS=1 nice -n 15 python -m benchmarks.gates_hidden [--specs prop_2 test_prop]

Writes benchmarks/results/gates_hidden.json and gates_hidden.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.gates import RESULTS, instances
from benchmarks.gates_measure import attack, latency
from benchmarks.meta import run_meta
from relugate.compiler.check import check_bundle
from relugate.compiler.compile import CompileOptions, compile_model

SPECS = ("prop_2", "test_prop")


def _output_gate_rows() -> dict[tuple[str, str], dict[str, Any]]:
    path = RESULTS / "gates.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["network"], r["specs"][0]): r["fidelity"][0] for r in rows}


def run_one(model: Path, spec: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    options = CompileOptions(
        out_dir=out, overwrite=True, gate_timeout=args.gate_timeout, gate_layer=args.gate_layer
    )
    report = compile_model(model, options, specs=[spec]).report
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    check_bundle(out, say=lambda _: None)
    hidden = report.get("hidden_gate") or {}
    return {
        "network": model.name,
        "spec": spec.name,
        "verdict": report["verdict_original"][0]["verdict"],
        "layer": hidden.get("layer"),
        "values": int(np.prod(hidden["shape"])) if hidden else None,
        "design": hidden.get("design"),
        "tail_proof": hidden.get("tail_proof"),
        "output_gates": len(report["gates"]),
        "seconds": report["gate_proof"]["seconds"] | {"compile": compile_s},
        "check_seconds": time.perf_counter() - start,
        "fidelity": report["fidelity"][0],
        "attack": attack(model, out / "model.onnx", spec, args.samples, args.starts),
        "latency": latency(out / "model.onnx"),
    }


def clamp_only_latency(bundle: Path, rounds: int = 15) -> dict[str, Any]:
    """Latency of the bundle's clamp without the ungated tail copy (telemetry off)."""
    import tempfile

    import onnx

    from relugate.compiler.gates_onnx import strip_gates
    from relugate.compiler.hidden_onnx import append_clamp, find_cut

    cert = json.loads((bundle / "certificate.json").read_text())["hidden_gate"]
    core = strip_gates(onnx.load(str(bundle / "model.onnx")))
    lo, hi = (np.array(cert["region"][k], dtype=np.float64) for k in ("lo", "hi"))
    bare = append_clamp(core, find_cut(core, cert["layer"]), lo, hi, ungated=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(bare, str(path))
        return latency(path, rounds)


def add_clamp_only(path: Path, work: Path) -> None:
    """Measure ``clamp_only_latency`` for every row of a finished run (in place)."""
    data = json.loads(path.read_text())
    for r in data["rows"]:
        bundle = work / f"{Path(r['network']).stem}-{Path(r['spec']).stem}"
        r["latency_clamp_only"] = clamp_only_latency(bundle)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _row_md(r: dict[str, Any], output: dict[tuple[str, str], dict[str, Any]]) -> str:
    fid, att, lat = r["fidelity"], r["attack"], r["latency"]
    other = output.get((r["network"], r["spec"]))
    proof = ", ".join(f"{p['method']} {p['seconds']:.2f} s" for p in r["tail_proof"] or [])
    wide = lat.get("batch1024")
    wide_cell = f"{wide['ratio']:.3f}" if wide else "-"
    bare = r.get("latency_clamp_only")
    bare_cell = (
        f"{bare['batch1']['ratio']:.3f} / {bare['batch1024']['ratio']:.3f}"
        if bare and "batch1024" in bare
        else "-"
    )
    return (
        f"| {r['network']} | {r['spec']} | {r['verdict']} | {r['layer']} ({r['values']}) | "
        f"{proof} | {_pct(fid['same_argmax'])} / {_pct(fid['same_argmin'])} / "
        f"{_pct(fid['close'])} | {fid['original_safe_samples']:,}: "
        f"{_pct(fid['safe_same_argmax'])} / {_pct(fid['safe_same_argmin'])} / "
        f"{_pct(fid['safe_close'])} | "
        f"{_pct(other['safe_close']) if other else 'n/a'} | "
        f"{att['samples']:,} + {att['pgd_points']} | "
        f"{att['unsafe_original']}+{att['pgd_unsafe_original']} | "
        f"{att['unsafe_gated'] + att['pgd_unsafe_gated']} | {lat['batch1']['ratio']:.3f} | "
        f"{wide_cell} | {bare_cell} |"
    )


HEADER = [
    "| network | spec | verdict (original) | hidden layer (values clamped) | tail proof "
    "(verify_model) | fidelity all: argmax / argmin / close | fidelity original-safe "
    "(samples: argmax / argmin / close) | output gates: original-safe close | attack: "
    "samples + PGD points | unsafe original (samples+PGD) | unsafe gated | latency ratio b1 | "
    "latency ratio b1024 | clamp only (no telemetry copy): b1 / b1024 |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _summary(rows: list[dict[str, Any]]) -> str:
    safe = [r["fidelity"]["safe_close"] for r in rows if r["fidelity"]["safe_close"] is not None]
    unsafe = sum(r["attack"]["unsafe_gated"] + r["attack"]["pgd_unsafe_gated"] for r in rows)
    b1 = [r["latency"]["batch1"]["ratio"] for r in rows]
    wide = [r["latency"]["batch1024"]["ratio"] for r in rows if "batch1024" in r["latency"]]
    return (
        f"{len(rows)} instances, all proved and re-checked; unsafe gated outputs found by the "
        f"attacks: {unsafe}; fidelity on the original-safe samples (close within 1e-5): min "
        f"{_pct(min(safe, default=None))}, median {_pct(float(np.median(safe)) if safe else None)}"
        f"; latency gated/ungated: batch 1 median {np.median(b1):.3f}, batch 1024 median "
        f"{np.median(wide):.3f}."
    )


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    output = _output_gate_rows()
    lines = [
        "# Hidden-layer gates on the violated public instances",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}; "
        f"`compile --gate-layer {meta['gate_layer']}`; {meta['samples']:,} attack samples per "
        f"case box + PGD from {meta['starts']} starts per unsafe polytope on the original net's "
        "margin; fidelity on 10,000 uniform samples ('close': every output within 1e-5 "
        "relative of the original); latency: onnxruntime, one thread, gated vs the clamp "
        "stripped, alternating rounds, median ratio. Every bundle passed `relugate check`."
        + (f" {meta['note']}" if "note" in meta else ""),
        "",
        _summary(rows),
        "",
        *HEADER,
        *[_row_md(r, output) for r in rows],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+", default=list(SPECS), help="spec file stems")
    parser.add_argument("--gate-layer", default="hidden")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--gate-timeout", type=float, default=60.0)
    parser.add_argument("--work", default="/tmp/relugate-gates-hidden-bench")
    parser.add_argument("--output", default="gates_hidden")
    parser.add_argument("--note", help="a remark on the run (e.g. machine load) for the .md")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    parser.add_argument(
        "--add-clamp-only", action="store_true", help="measure the clamp alone on a finished run"
    )
    args = parser.parse_args(argv)
    if args.add_clamp_only:
        add_clamp_only(RESULTS / f"{args.output}.json", Path(args.work))
        args.render = True
    if args.render:
        data = json.loads((RESULTS / f"{args.output}.json").read_text())
        (RESULTS / f"{args.output}.md").write_text(markdown(data["rows"], data["meta"]))
        return 0
    console = Console()
    rows = []
    for model, spec in instances(None, False):
        if spec.stem not in args.specs:
            continue
        rows.append(run_one(model, spec, Path(args.work) / f"{model.stem}-{spec.stem}", args))
        console.print(_row_md(rows[-1], _output_gate_rows()), markup=False, highlight=False)
    meta = run_meta(samples=args.samples, starts=args.starts) | {"gate_layer": args.gate_layer}
    if args.note:
        meta["note"] = args.note
    data = {"meta": meta, "rows": rows}
    (RESULTS / f"{args.output}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
