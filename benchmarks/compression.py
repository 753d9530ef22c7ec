"""Compression benchmark (issue 5): ``stable_relu`` and ``maxpool_to_relu`` with evidence.

Three studies, each in its own module, written to one results file:

1. ``compression_digits``: Serra et al. (CPAIOR 2020) Table 1 setting on
   scikit-learn's digits, on the pixel box [0, 1]^64 and on the data box
   (per-pixel min/max of the training images), crown and milp, beside their
   figures, with an exact (MILP) check of every claim on nets of <= 100 ReLUs.
2. ``compression_acas``: ACAS Xu with each property's input box, ReLUs /
   parameters / FLOPs removed and onnxruntime latency, reduced vs unreduced.
3. ``compression_conv``: Convnet_maxpool on each spec box through the real
   compile path (``maxpool=relu``): original -> max-pool rewritten -> stable
   ReLUs removed, checked against the original ONNX file, latency.

Every reduced network is checked against its original: the largest output
difference over ``CHECK_SAMPLES`` points of the box (corners, center and
uniform samples) both run in onnxruntime in batches, and the largest PGD finds.

    python -m benchmarks.compression [--all] [--only digits,acas,conv] [--seeds N]

``--only`` reruns some studies and keeps the others' results from the last
run.  Writes benchmarks/results/compression.json and compression.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks.meta import run_meta
from relugate.compiler.domain import Box
from relugate.compiler.exporter import to_onnx
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import mismatch, session
from relugate.passes.analysis.pgd import max_difference
from relugate.passes.base import PassContext
from relugate.passes.stable_relu import StableRelu

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "benchmarks"
CHECK_SAMPLES = 100_000
CHUNK = 5_000
STUDIES = ("digits", "acas", "conv")


# --- shared helpers ----------------------------------------------------------------


def compress(
    net: Network, box: Box, method: str, time_limit: float = 120.0, skip: bool = False
) -> tuple[Network, dict[str, Any]]:
    """``stable_relu`` alone on ``box`` with analysis ``method`` (``skip``: with linear skip
    paths for active units, ``passes/linear_skip``): the network and a summary."""
    t0 = time.perf_counter()
    options = {"stability": method, "stability_time_limit": time_limit, "skip": skip}
    ctx = PassContext(domain=box, options=options)
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
        "skipped": sum(r.get("active_skipped", 0) for r in layers),
        "relu_layers_dropped": sum(bool(r.get("relu_dropped")) for r in layers),
        "stable_units": sum(r["inactive_removed"] + r.get("active", 0) for r in layers),
        "claims": sorted(
            (e.claim, e.where["layer"], e.where["index"])
            for e in result.certificate
            if e.claim in ("inactive", "active")
        ),
    }


def symbolic_batch(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A copy of an ONNX file whose input and output take any batch size (only the
    declared first dimension changes; the graph's nodes are untouched)."""
    copy = onnx.load(str(model)) if isinstance(model, str | Path) else onnx.ModelProto()
    if isinstance(model, onnx.ModelProto):
        copy.CopyFrom(model)
    inits = {i.name for i in copy.graph.initializer}
    for value in [v for v in copy.graph.input if v.name not in inits] + list(copy.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "N"
    del copy.graph.value_info[:]
    return copy


def batched(net: Network) -> onnx.ModelProto:
    return to_onnx(net, batch="N")


def sample_gap(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    box: Box,
    sample_shape: tuple[int, ...],
    samples: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Both batched models in onnxruntime on the box's corners, center and ``samples``
    uniform points, ``CHUNK`` at a time: the largest absolute and relative
    (``mismatch``: over ``max(1, |y|)``) output difference."""
    samples = CHECK_SAMPLES if samples is None else samples
    a, b = session(reference), session(candidate)
    name_a, name_b = a.get_inputs()[0].name, b.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    worst_abs = worst_rel = 0.0
    done = 0
    first = box.corners_and_center()
    while done < samples:
        n = min(CHUNK, samples - done)
        x = box.sample(n, rng)
        if not done:
            x = np.concatenate([first, x])
        x32 = np.ascontiguousarray(x.reshape(-1, *sample_shape), dtype=np.float32)
        ya = np.asarray(a.run(None, {name_a: x32})[0]).reshape(len(x), -1)
        yb = np.asarray(b.run(None, {name_b: x32})[0]).reshape(len(x), -1)
        worst_abs = max(worst_abs, float(np.abs(ya - yb).max()))
        worst_rel = max(worst_rel, float(mismatch(ya, yb).max()))
        done += n
        if progress is not None:
            progress(n)
    return {"samples": samples + len(first), "max_abs_diff": worst_abs, "max_rel_diff": worst_rel}


def check(
    before: Network,
    after: Network,
    box: Box,
    reference: onnx.ModelProto | None = None,
    samples: int | None = None,
) -> dict[str, Any]:
    """``sample_gap`` of ``after`` against ``reference`` (default: ``before`` exported),
    and the largest single-output difference PGD finds between the two networks."""
    ref = batched(before) if reference is None else reference
    gap = sample_gap(ref, batched(after), box, before.input.sample_shape, samples)
    pgd = max_difference(before, after, box, np.random.default_rng(1), starts=10, steps=50)
    return {**gap, "pgd_max_abs_diff": pgd.value}


def interleaved_latency(
    a: onnx.ModelProto | str, b: onnx.ModelProto | str, x: np.ndarray, rounds: int
) -> dict[str, float]:
    """Median per-call onnxruntime latency (1 thread) of ``a`` and ``b`` on ``x``, calls
    alternating so both see the same machine noise; ``ratio`` = b / a."""
    sa, sb = session(a), session(b)
    feed_a, feed_b = {sa.get_inputs()[0].name: x}, {sb.get_inputs()[0].name: x}
    for _ in range(3):
        sa.run(None, feed_a)
        sb.run(None, feed_b)
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sa.run(None, feed_a)
        t1 = time.perf_counter()
        sb.run(None, feed_b)
        ta.append(t1 - t0)
        tb.append(time.perf_counter() - t1)
    ma, mb = float(np.median(ta)), float(np.median(tb))
    return {"a_us": 1e6 * ma, "b_us": 1e6 * mb, "ratio": mb / ma, "rounds": rounds}


# --- driver ------------------------------------------------------------------------


def _load_previous() -> dict[str, Any]:
    path = RESULTS / "compression.json"
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    if not isinstance(data.get("meta", {}).get("seconds"), dict):
        return {}  # written by an older version of this benchmark
    return {k: v for k, v in data.items() if k == "meta" or k in STUDIES}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from benchmarks import compression_acas, compression_conv, compression_digits

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--all", action="store_true", help="every ACAS Xu net with LP; 100,000 conv samples"
    )
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per digits net")
    parser.add_argument("--only", default=",".join(STUDIES), help="comma-separated studies")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(STUDIES))
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from {STUDIES}")
    console = Console()
    payload = _load_previous() if set(only) != set(STUDIES) else {}
    meta = payload.setdefault("meta", {})
    meta.update(run_meta())
    seconds = meta.setdefault("seconds", {})
    argvs = meta.setdefault("argv", {})
    runners: dict[str, Callable[[], Any]] = {
        "digits": lambda: compression_digits.run(args.seeds, console),
        "acas": lambda: compression_acas.run(args.all, console),
        "conv": lambda: compression_conv.run(args.all, console),
    }
    for study in only:
        t0 = time.perf_counter()
        payload[study] = runners[study]()
        seconds[study] = round(time.perf_counter() - t0, 1)
        argvs[study] = sys.argv[1:] if argv is None else argv
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compression.json").write_text(json.dumps(payload, indent=1) + "\n")
    text = markdown(payload)
    (RESULTS / "compression.md").write_text(text)
    console.print(text, markup=False, highlight=False)
    return 0


def markdown(payload: dict[str, Any]) -> str:
    from benchmarks import compression_acas, compression_conv, compression_digits

    meta = payload["meta"]
    took = ", ".join(f"{k} {v:.0f} s" for k, v in meta["seconds"].items())
    lines = [
        "# Compression: stable_relu and maxpool_to_relu (issue 5)",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}; {took}.",
        "`python -m benchmarks.compression` (arguments per study: "
        + ", ".join(f"{k}: `{' '.join(v) or '(none)'}`" for k, v in meta["argv"].items())
        + ").",
        "",
    ]
    if "digits" in payload:
        lines += [*compression_digits.markdown(payload["digits"]), ""]
    if "acas" in payload:
        lines += [*compression_acas.markdown(payload["acas"]), ""]
    if "conv" in payload:
        lines += [*compression_conv.markdown(payload["conv"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
