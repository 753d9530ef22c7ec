"""Stability benchmark: how many ReLUs do the fast analyses prove stable on each
ACAS Xu network and property input box, next to the exact count from MILP?

Per (network, box) pair: interval, CROWN, input splitting (CROWN on an adaptive
partition, ``split_stability``) with the fast budget and with a large one, LP
tightening (from CROWN), and exact MILP stability (from CROWN bounds, with a
time limit).  The MILP labels every unit active / inactive / both / unknown;
where it does not finish, the exact count is bracketed: at least the units some
analysis proved stable, at most the units not witnessed taking both signs (by
the MILP or by sampling).  Soundness: 10,000 points of the box, run in float32,
must never give a claimed-stable unit the wrong sign (``violations``).

    python -m benchmarks.stability [--all] [--nets 1_1,2_1] [--milp-limit 120]

Writes benchmarks/results/stability.json and stability.md.  The props 1 and 2
share one box; they are one pair here.
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
from rich.console import Console
from rich.progress import track

from benchmarks.meta import run_meta
from relugate.compiler.domain import Box
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.layers import Reshape
from relugate.compiler.network import Network
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.bounds import Bounds
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.interval import interval_bounds
from relugate.passes.analysis.milp import exact_stability_all, lp_tighten
from relugate.passes.analysis.split_stability import split_bounds
from relugate.passes.analysis.steps import ReluStep, Step, steps_of

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ACAS = ROOT.parent / "shared" / "benchmarks" / "acasxu"
DEFAULT_NETS = ("1_1", "2_1", "3_3", "4_2", "5_3")
SOUND_SAMPLES = 10_000
Labels = dict[int, np.ndarray]
"""Per ReLU step: +1 proved active, -1 proved inactive, 0 not proved (MILP: 2 both)."""


def pairs(nets: list[str], props: list[str], folder: Path = ACAS) -> list[tuple[Path, str, Box]]:
    """(network, label, box) for every distinct box of the properties on every network."""
    boxes: list[tuple[str, Box]] = []
    for prop in props:
        cases = read_vnnlib(folder / f"{prop}.vnnlib").cases
        for i, case in enumerate(cases):
            name = prop if len(cases) == 1 else f"{prop}#{i}"
            same = [j for j, (_, b) in enumerate(boxes) if b == case.box]
            if same:
                boxes[same[0]] = (f"{boxes[same[0]][0]}+{name}", case.box)
            else:
                boxes.append((name, case.box))
    return [
        (folder / f"ACASXU_run2a_{net}_batch_2000.onnx", label, box)
        for net in nets
        for label, box in boxes
    ]


def labels_of(steps: list[Step], bounds: Bounds) -> Labels:
    out = {}
    for k, step in enumerate(steps):
        if isinstance(step, ReluStep):
            lo, hi = bounds.lo[k][0], bounds.hi[k][0]
            out[k] = np.where(hi <= 0, -1, np.where(lo >= 0, 1, 0)).astype(np.int8)
    return out


def timed(run: Callable[[], Bounds], steps: list[Step]) -> tuple[Labels, float]:
    t0 = time.perf_counter()
    bounds = run()
    return labels_of(steps, bounds), time.perf_counter() - t0


def float32_values(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Float32 values at every analysis step boundary (Reshape layers vanish)."""
    h = x.astype(np.float32).reshape((len(x), *net.input.sample_shape))
    values = [h.reshape(len(x), -1)]
    for layer in net.layers:
        h = layer.forward(h)
        if not isinstance(layer, Reshape):
            values.append(h.reshape(len(x), -1))
    return values


def sample_check(
    net: Network, box: Box, claims: dict[str, Labels], samples: int, seed: int = 0
) -> tuple[dict[str, int], Labels]:
    """Units whose claimed sign some float32 sample breaks, per analysis, and the units
    seen taking both signs (labelled 2); samples in chunks of ``SOUND_SAMPLES``."""
    rng = np.random.default_rng(seed)
    relus = list(next(iter(claims.values())))
    pos = {k: np.zeros(len(claims["interval"][k]), dtype=bool) for k in relus}
    neg = {k: p.copy() for k, p in pos.items()}
    for start in range(0, samples, SOUND_SAMPLES):
        values = float32_values(net, box.sample(min(SOUND_SAMPLES, samples - start), rng))
        for k in relus:
            pos[k] |= (values[k] > 0).any(axis=0)
            neg[k] |= (values[k] < 0).any(axis=0)
    violations = {
        name: int(sum(np.sum(((c[k] == 1) & neg[k]) | ((c[k] == -1) & pos[k])) for k in relus))
        for name, c in claims.items()
    }
    return violations, {k: np.where(pos[k] & neg[k], 2, 0).astype(np.int8) for k in relus}


def exact_labels(steps: list[Step], box: Box, limit: float) -> tuple[Labels, float, bool]:
    t0 = time.perf_counter()
    crown = crown_bounds(steps, box.lo, box.hi)
    result, _ = exact_stability_all(steps, crown, time_limit=limit)
    code = {"active": 1, "inactive": -1, "both": 2, "unknown": 0}
    labels = {k: np.array([code[s] for s in st.labels], dtype=np.int8) for k, st in result.items()}
    done = all(st.counts()["unknown"] == 0 for st in result.values())
    return labels, time.perf_counter() - t0, done


def count(lab: Labels, values: tuple[int, ...] = (1, -1)) -> int:
    return int(sum(np.isin(v, values).sum() for v in lab.values()))


def measure(path: Path, label: str, box: Box, args: argparse.Namespace) -> dict[str, Any]:
    net = import_network(load_model(path))
    steps = steps_of(net)
    lo, hi = box.lo, box.hi
    runs: dict[str, Callable[[], Bounds]] = {
        "interval": lambda: interval_bounds(steps, lo, hi),
        "crown": lambda: crown_bounds(steps, lo, hi),
        "split": lambda: split_bounds(steps, lo, hi, max_boxes=args.split_boxes).bounds,
        "split_full": lambda: split_bounds(steps, lo, hi, max_boxes=args.full_boxes).bounds,
        "lp": lambda: lp_tighten(steps, crown_bounds(steps, lo, hi), time_limit=args.lp_limit),
    }
    claims, seconds = {}, {}
    for name, run in runs.items():
        claims[name], seconds[name] = timed(run, steps)
    claims["milp"], seconds["milp"], done = exact_labels(steps, box, args.milp_limit)
    violations, seen = sample_check(net, box, claims, args.samples)
    proved = {k: np.where(np.any([c[k] == 1 for c in claims.values()], axis=0), 1, 0) for k in seen}
    for k in proved:
        proved[k][np.any([c[k] == -1 for c in claims.values()], axis=0)] = -1
    witnessed = {k: np.where((seen[k] == 2) | (claims["milp"][k] == 2), 2, 0) for k in seen}
    total = sum(s.n for s in steps if isinstance(s, ReluStep))
    return {
        "network": path.name.removeprefix("ACASXU_run2a_").removesuffix("_batch_2000.onnx"),
        "box": label,
        "relus": total,
        "stable": {name: count(lab) for name, lab in claims.items()},
        "seconds": seconds,
        "milp_complete": done,
        "milp_unknown": count(claims["milp"], (0,)),
        "exact_lower": count(proved),
        "exact_upper": total - count(witnessed, (2,)),
        "contradictions": int(sum(np.sum((proved[k] != 0) & (witnessed[k] == 2)) for k in seen)),
        "violations": violations,
    }


def ratios(row: dict[str, Any], fast: str) -> dict[str, float]:
    """Share of the exactly-stable units ``fast`` finds (at least; exact when the count is
    decided) and its time over the MILP's (at most, when the MILP ran out of time)."""
    found = row["stable"][fast] / max(row["exact_upper"], 1)
    return {"found": found, "time": row["seconds"][fast] / row["seconds"]["milp"]}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs": len(rows)}
    for fast in ("crown", "split", "split_full", "lp"):
        r = [ratios(row, fast) for row in rows]
        out[fast] = {
            "median_found": float(np.median([x["found"] for x in r])),
            "min_found": float(np.min([x["found"] for x in r])),
            "median_time_ratio": float(np.median([x["time"] for x in r])),
            "max_time_ratio": float(np.max([x["time"] for x in r])),
        }
    out["violations"] = sum(sum(row["violations"].values()) for row in rows)
    out["contradictions"] = sum(row["contradictions"] for row in rows)
    out["exact_decided"] = sum(row["exact_lower"] == row["exact_upper"] for row in rows)
    return out


def ratio(x: float) -> str:
    return f"1/{1 / x:.0f}" if 0 < x < 1 else f"{x:.1f}"


NAMES = ("interval", "crown", "split", "split_full", "lp", "milp")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    s = summary(rows)
    lines = [
        "# ReLU stability on ACAS Xu property boxes",
        "",
        f"relugate {meta['relugate']}, {meta['machine']}, {meta['date']}, one thread. "
        f"split: CROWN on at most {meta['split_boxes']} sub-boxes (split_full: "
        f"{meta['full_boxes']}); lp: LP tightening from CROWN (limit {meta['lp_limit']} s); "
        f"milp: exact stability from CROWN bounds (limit {meta['milp_limit']} s). "
        "exact: the number of stable ReLUs, a range [proved stable by some analysis, not "
        "witnessed unstable] when undecided. found: stable by the analysis / exact upper "
        "end (a lower bound on the share found). time: analysis s / MILP s (an upper bound "
        "when the MILP ran out of time). Violations: claims broken by "
        f"{meta['samples']:,} float32 samples per pair.",
        "",
        "| analysis | median found | min found | median time ratio | max time ratio |",
        "|---|---|---|---|---|",
    ]
    for fast in ("crown", "split", "split_full", "lp"):
        f = s[fast]
        lines.append(
            f"| {fast} | {f['median_found']:.1%} | {f['min_found']:.1%} | "
            f"{ratio(f['median_time_ratio'])} | {ratio(f['max_time_ratio'])} |"
        )
    lines += [
        "",
        f"Pairs: {s['pairs']}; exact count decided on {s['exact_decided']}; "
        f"violations: {s['violations']}; contradictions (proved stable but witnessed "
        f"unstable): {s['contradictions']}.",
        "",
        "| net | box | ReLUs | " + " | ".join(NAMES) + " | exact | milp unknown |",
        "|---|---|---|" + "---|" * len(NAMES) + "---|---|",
    ]
    for r in rows:
        cells = [f"{r['stable'][n]} ({r['seconds'][n]:.2f} s)" for n in NAMES]
        lo, hi = r["exact_lower"], r["exact_upper"]
        exact = str(lo) if lo == hi else f"{lo}-{hi}"
        lines.append(
            f"| {r['network']} | {r['box']} | {r['relus']} | "
            + " | ".join(cells)
            + f" | {exact} | {r['milp_unknown']} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="all 45 networks")
    parser.add_argument("--nets", default=",".join(DEFAULT_NETS), help="e.g. 1_1,2_1")
    parser.add_argument("--props", default="prop_1,prop_2,prop_3,prop_4")
    parser.add_argument("--milp-limit", type=float, default=120.0, help="seconds per pair")
    parser.add_argument("--lp-limit", type=float, default=60.0, help="seconds per pair")
    parser.add_argument("--split-boxes", type=int, default=256)
    parser.add_argument("--full-boxes", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=100_000, help="soundness samples")
    parser.add_argument("--acas", type=Path, default=ACAS, help="the acasxu benchmark folder")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--output", default="stability", help="results file stem")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    nets = (
        [f"{a}_{b}" for a in range(1, 6) for b in range(1, 10)]
        if args.all
        else args.nets.split(",")
    )
    console = Console()
    rows = []
    for path, label, box in track(
        pairs(nets, args.props.split(","), args.acas), "pairs", console=console
    ):
        row = measure(path, label, box, args)
        rows.append(row)
        console.print(
            f"{row['network']} {label}: "
            + ", ".join(f"{n} {row['stable'][n]}" for n in NAMES)
            + f", exact {row['exact_lower']}-{row['exact_upper']}, "
            f"milp {row['seconds']['milp']:.1f} s, violations {sum(row['violations'].values())}",
            highlight=False,
        )
    meta = run_meta(
        **{
            k: getattr(args, k)
            for k in ("milp_limit", "lp_limit", "split_boxes", "full_boxes", "samples")
        },
    )
    args.results.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "summary": summary(rows), "rows": rows}
    (args.results / f"{args.output}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.results / f"{args.output}.md").write_text(markdown(rows, meta))
    console.print(markdown(rows, meta).split("\n\n")[2], markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
