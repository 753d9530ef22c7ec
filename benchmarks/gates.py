"""Gates benchmark: every violated public instance repaired by proved output gates.

For each instance that ``benchmarks/results/verify_*.json`` reports violated
(ACAS Xu props 2-4 on the nets where they fail, MNIST fc, test_sat; with
``--include-unknown`` also the undecided ones): ``relugate compile --spec``
(verify, gate, prove, fidelity on 10,000 samples), ``relugate check`` on the
bundle, an attack on the gated model (1,000,000 samples + PGD from 100 starts
per unsafe polytope, see ``gates_measure``) and the gates' latency overhead in
onnxruntime.  Then one multi-property compile: ACAS Xu props 1-4 on one net.

    OPENBLAS_NUM_THREADS=1 nice -n 5 python -m benchmarks.gates [--only acasxu] [--limit N]

Writes benchmarks/results/gates.json and gates.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.gates_measure import attack, latency
from benchmarks.meta import run_meta
from relugate.compiler.check import check_bundle
from relugate.compiler.compile import CompileOptions, compile_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results"
FOLDERS = ("acasxu", "mnistfc", "verivital", "vnncomp2021_test")
MULTI_NET = "ACASXU_run2a_1_8_batch_2000.onnx"


def instances(only: str | None, unknown: bool) -> list[tuple[Path, Path]]:
    wanted = {"violated", "unknown"} if unknown else {"violated"}
    rows = []
    for folder in FOLDERS:
        path = RESULTS / f"verify_{folder}.json"
        if (only and folder != only) or not path.is_file():
            continue
        for r in json.loads(path.read_text())["rows"]:
            if r["verdict"] in wanted:
                spec = next((SHARED / folder).rglob(r["spec"]))
                rows.append((SHARED / folder / r["network"], spec))
    return rows


def _proof_ms(report: dict[str, Any]) -> float:
    return sum(c["millis"] for c in report["gate_proof"]["cases"])


def run_one(model: Path, specs: list[Path], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    options = CompileOptions(out_dir=out, overwrite=True, gate_timeout=args.gate_timeout)
    report = compile_model(model, options, specs=specs).report
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    check_bundle(out, say=lambda _: None)
    row: dict[str, Any] = {
        "network": model.name,
        "specs": [s.name for s in specs],
        "verdicts": [v["verdict"] for v in report["verdict_original"]],
        "gated": [v["gated"] for v in report["verdict_original"]],
        "gates": [g["formula"] for g in report["gates"]],
        "delta": [g["delta"] for g in report["gates"]],
        "proof_ms": _proof_ms(report),
        "proof_modes": [c["modes"] for c in report["gate_proof"]["cases"]],
        "seconds": report["gate_proof"]["seconds"] | {"compile": compile_s},
        "check_seconds": time.perf_counter() - start,
        "fidelity": report["fidelity"],
        "attack": [
            attack(model, out / "model.onnx", spec, args.samples, args.starts) for spec in specs
        ],
        "latency": latency(out / "model.onnx") if report["gates"] else None,
    }
    return row


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _latency_cells(lat: dict[str, Any] | None) -> str:
    if lat is None:
        return "- | -"
    wide = lat.get("batch1024")
    b1 = f"{lat['batch1']['ratio']:.3f} ({lat['batch1']['ungated_us']:.1f} us)"
    return f"{b1} | {wide['ratio']:.3f} ({wide['ungated_us']:.0f} us)" if wide else f"{b1} | -"


def _row_md(r: dict[str, Any]) -> list[str]:
    lines = []
    for i, spec in enumerate(r["specs"]):
        fid, att = r["fidelity"][i], r["attack"][i]
        found = f"{att['unsafe_original']}+{att['pgd_unsafe_original']}"
        lines.append(
            f"| {r['network']} | {spec} | {r['verdicts'][i]} | {len(r['gates'])} | "
            f"{r['proof_ms']:.0f} | {_pct(fid['same_argmax'])} / {_pct(fid['same_argmin'])} / "
            f"{_pct(fid['close'])} | {fid['original_safe_samples']:,}: "
            f"{_pct(fid['safe_same_argmax'])} / {_pct(fid['safe_same_argmin'])} / "
            f"{_pct(fid['safe_close'])} | "
            f"{att['samples']:,} + {att['pgd_points']} | {found} | "
            f"{att['unsafe_gated'] + att['pgd_unsafe_gated']} | {_latency_cells(r['latency'])} |"
        )
    return lines


HEADER = [
    "| network | spec | verdict (original) | gates | proof ms | fidelity all: argmax / argmin / "
    "close | fidelity original-safe (samples: argmax / argmin / close) | attack: samples + PGD "
    "points | unsafe original "
    "(samples+PGD) | unsafe gated | latency ratio b1 (ungated) | latency ratio b1024 (ungated) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    safe = [f["safe_close"] for r in rows for f in r["fidelity"] if f["safe_close"] is not None]
    unsafe = sum(a["unsafe_gated"] + a["pgd_unsafe_gated"] for r in rows for a in r["attack"])
    b1 = [r["latency"]["batch1"]["ratio"] for r in rows if r["latency"]]
    wide = [r["latency"]["batch1024"]["ratio"] for r in rows if r["latency"]]
    return [
        f"{len(rows)} instances, all proved and re-checked; unsafe gated outputs found by the "
        f"attacks: {unsafe}; fidelity on the original-safe samples (close within 1e-5): "
        f"min {_pct(min(safe, default=None))}; latency gated/ungated: batch 1 median "
        f"{np.median(b1):.3f} (range {min(b1):.3f}-{max(b1):.3f}), batch 1024 median "
        f"{np.median(wide):.3f} (range {min(wide):.3f}-{max(wide):.3f}).",
        "",
    ]


def markdown(rows: list[dict[str, Any]], multi: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [
        "# Output gates on the violated public instances",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}; "
        f"{meta['samples']:,} attack samples per case box + PGD from {meta['starts']} starts "
        "per unsafe polytope on the original net's margin; fidelity on 10,000 uniform samples "
        "('close': every output within 1e-5 relative of the original); latency: onnxruntime, "
        "one thread, gated vs ungated (gates stripped) in alternating rounds, median ratio. "
        "Every bundle passed `relugate check`." + (f" {meta['note']}" if "note" in meta else ""),
        "",
        *_summary(rows),
        *HEADER,
    ]
    for r in rows:
        lines += _row_md(r)
    if multi is not None:
        lines += ["", f"## Props 1-4 at once on {multi['network']}", "", *HEADER, *_row_md(multi)]
        lines += ["", "Gates:", *[f"- `{g}`" for g in multi["gates"]]]
        lines += ["", f"Proof modes per case (gate order): {multi['proof_modes']}"]
    lines += ["", "## Gates per instance", ""]
    lines += [
        f"- {r['network']} {', '.join(r['specs'])}: `{'`; `'.join(r['gates'])}`" for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="one benchmark folder (acasxu, mnistfc, ...)")
    parser.add_argument("--include-unknown", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N instances")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--gate-timeout", type=float, default=60.0)
    parser.add_argument("--skip-multi", action="store_true")
    parser.add_argument("--work", default="/tmp/relugate-gates-bench")
    parser.add_argument("--output", default="gates")
    parser.add_argument("--note", help="a remark on the run (e.g. machine load) for the .md")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads((RESULTS / f"{args.output}.json").read_text())
        text = markdown(data["rows"], data["multi_property"], data["meta"])
        (RESULTS / f"{args.output}.md").write_text(text)
        return 0
    console = Console()
    work = Path(args.work)
    rows = []
    for model, spec in instances(args.only, args.include_unknown)[: args.limit]:
        out = work / f"{model.stem}-{spec.stem}"
        rows.append(run_one(model, [spec], out, args))
        console.print(_row_md(rows[-1])[0], markup=False, highlight=False)
    multi = None
    if not args.skip_multi:
        specs = [SHARED / "acasxu" / f"prop_{i}.vnnlib" for i in range(1, 5)]
        multi = run_one(SHARED / "acasxu" / MULTI_NET, specs, work / "multi", args)
        console.print("\n".join(_row_md(multi)), markup=False, highlight=False)
    meta = run_meta(samples=args.samples, starts=args.starts)
    if args.note:
        meta["note"] = args.note
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "rows": rows, "multi_property": multi}
    (RESULTS / f"{args.output}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(markdown(rows, multi, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
