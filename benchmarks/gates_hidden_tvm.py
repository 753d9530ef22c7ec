"""Hidden gates in the deployed bundle: TVM latency and the runtime's firing counts.

For every bundle of the hidden-gate benchmark (``gates_hidden``, its work folder):
the gated ``model.onnx`` (clamp + the ungated tail copy) and the same file with the
gate stripped are lowered with TVM (llvm, symbolic batch, untuned, as the default
compile does; the ungated one also through the gated library's pre-fused
pipeline), loaded through ``relugate.runtime`` and called on the same inputs from
the case box, interleaved rounds, one thread (``gate_latency``'s method).  The
runtime's ``gate_fired`` count on the batch-1024 input is compared with the rows
whose hidden values the clamp changes (onnxruntime on the core with the cut as an
output).

    OPENBLAS_NUM_THREADS=1 nice -n 15 python -m benchmarks.gates_hidden_tvm

Writes benchmarks/results/gates_hidden_tvm.json and .md.
"""

from __future__ import annotations

import os

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks.gates import RESULTS
from benchmarks.meta import run_meta
from benchmarks.tvm_latency import make_bundle, timed_rounds
from relugate.compiler.backends.tvm import lower
from relugate.compiler.gates_onnx import strip_gates
from relugate.compiler.hidden_onnx import find_cut, probe_model
from relugate.compiler.onnx_run import session

BATCHES = (1, 1024)


def _clipped(core: onnx.ModelProto, layer: int, lo: np.ndarray, hi: np.ndarray, x: Any) -> int:
    """Rows whose hidden values at ``layer`` leave ``[lo, hi]`` (onnxruntime on the core)."""
    from relugate.compiler.fidelity import symbolic_batch

    cut = find_cut(core, layer)
    probe = symbolic_batch(probe_model(core, cut)) or probe_model(core, cut)
    sess = session(probe)
    name = sess.get_inputs()[0].name
    h = np.asarray(sess.run([cut.tensor], {name: x})[0]).reshape(len(x), -1)
    return int(((h < lo) | (h > hi)).any(axis=1).sum())


def measure(bundle: Path, work: Path, rounds: int) -> dict[str, Any]:
    import relugate.runtime as rt

    cert = json.loads((bundle / "certificate.json").read_text())
    gate = cert["hidden_gate"]
    gated = onnx.load(str(bundle / "model.onnx"))
    core = strip_gates(gated)
    box = (np.asarray(cert["domain"]["lo"]), np.asarray(cert["domain"]["hi"]))
    variants = (("gated", gated, None), ("ungated", core, None), ("same", core, True))
    bundles = {
        name: rt.load(make_bundle(lower(model, "llvm", prefuse=fuse), model, box, work / name))
        for name, model, fuse in variants
    }
    lo, hi = (np.asarray(gate["region"][k]) for k in ("lo", "hi"))
    row: dict[str, Any] = {"bundle": bundle.name, "layer": gate["layer"]}
    rng = np.random.default_rng(0)
    sample = bundles["gated"].sample_shape
    for batch in BATCHES:
        x = box[0] + rng.random((batch, box[0].size)) * (box[1] - box[0])
        x = x.astype(np.float32).reshape(batch, *sample)
        fns = {name: (lambda b=b, x=x: b.run(x)) for name, b in bundles.items()}
        us = {k: min(v) * 1e6 for k, v in timed_rounds(fns, rounds).items()}
        bundles["gated"].reset_stats()
        bundles["gated"].run(x)
        row[f"b{batch}"] = {
            "us_per_call": {k: round(v, 2) for k, v in us.items()},
            "tvm_ratio": round(us["gated"] / us["ungated"], 3),
            "tvm_ratio_same_pipeline": round(us["gated"] / us["same"], 3),
            "gate_fired": bundles["gated"].stats()["gate_fired"],
            "rows_clipped": _clipped(core, gate["layer"], lo, hi, x),
        }
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def med(key: str, batch: int) -> float:
        return statistics.median(r[f"b{batch}"][key] for r in rows)

    lines = [
        "# Hidden gates in the bundle (TVM, gated vs ungated, runtime telemetry)",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}; one thread, "
        f"{meta['rounds']} interleaved rounds, minimum of the per-round mean; bundles of "
        "`benchmarks/results/gates_hidden.md` (clamp plus the ungated tail copy that the "
        "runtime compares against), called through `relugate.runtime`. The machine was "
        "shared with other engineers' runs: single figures move by several percent.",
        "",
        f"{len(rows)} bundles: TVM gated/ungated median {med('tvm_ratio', 1):.3f} at batch 1, "
        f"{med('tvm_ratio', 1024):.3f} at batch 1024 (same pre-fused pipeline: "
        f"{med('tvm_ratio_same_pipeline', 1):.3f} / "
        f"{med('tvm_ratio_same_pipeline', 1024):.3f}).",
        "",
        "| bundle | layer | TVM b1 us (ungated / same pipeline / gated) | ratio b1 | "
        "TVM b1024 us | ratio b1024 | runtime gate_fired b1024 | rows clipped b1024 (ORT) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b1, bk = r["b1"], r["b1024"]
        cells = []
        for b in (b1, bk):
            us = b["us_per_call"]
            cells.append(f"{us['ungated']} / {us['same']} / {us['gated']}")
            cells.append(f"{b['tvm_ratio']:.3f} ({b['tvm_ratio_same_pipeline']:.3f})")
        lines.append(
            f"| {r['bundle']} | {r['layer']} | {' | '.join(cells)} | {bk['gate_fired']} | "
            f"{bk['rows_clipped']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/relugate-gates-hidden-bench")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", default="prop_2", help="bundle folder names containing this")
    args = parser.parse_args(argv)
    rows = []
    for bundle in sorted(Path(args.work).iterdir()):
        if args.only not in bundle.name or not (bundle / "certificate.json").is_file():
            continue
        rows.append(measure(bundle, Path(args.work) / "tvm" / bundle.name, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    meta = run_meta(rounds=args.rounds, threads=1)
    data = {"meta": meta, "rows": rows}
    (RESULTS / "gates_hidden_tvm.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "gates_hidden_tvm.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
