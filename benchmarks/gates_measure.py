"""Measurements for the gates benchmark: attacks on a gated model and its latency.

* ``attack``: 1,000,000 uniform samples of each case box (float32 values inside
  it, in chunks) plus PGD on the ORIGINAL net's unsafe margin from 100 starts per
  unsafe polytope (every start's best point); the original and the gated model
  both run in onnxruntime; counts the unsafe outputs of each.
* ``latency``: onnxruntime, one thread, batch 1 and batch 1024, ungated core
  (gates stripped from the same file) and gated model timed in alternating
  rounds in one process; medians per call and their ratio.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.fidelity import run_any, symbolic_batch
from relugate.compiler.frontend import load_model
from relugate.compiler.gates_onnx import gate_part, strip_gates
from relugate.compiler.hidden_onnx import clamp_part
from relugate.compiler.importer import import_network
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import session
from relugate.compiler.spec import Case, Polytope, read_vnnlib
from relugate.compiler.verify import float32_inside
from relugate.passes.analysis.attack import margin_objective

CHUNK = 50_000


def pgd_endpoints(
    net: Network, case: Case, poly: Polytope, rng: np.random.Generator, starts: int, steps: int = 60
) -> np.ndarray:
    """Best point of each of ``starts`` sign-gradient ascents on ``-margin`` (the schedule
    of ``pgd.pgd_maximize``, kept per start instead of only the best overall)."""
    objective = margin_objective(net, poly)
    box = case.box
    x = box.sample(starts, rng)
    best_x, best_v = x.copy(), objective(x)[0]
    for t in range(steps):
        value, grad = objective(x)
        better = value > best_v
        best_x[better], best_v[better] = x[better], value[better]
        x = np.clip(x + 0.05 * (1 - t / steps) * box.width * np.sign(grad), box.lo, box.hi)
    value, _ = objective(x)
    better = value > best_v
    best_x[better] = x[better]
    return best_x


def _unsafe(model: onnx.ModelProto | str, net: Network, case: Case, x: np.ndarray) -> int:
    y = run_any(model, net.input, float32_inside(x, case.box)).astype(np.float64)
    return int(case.is_unsafe(y).sum())


def attack(
    original: Path, gated: Path, spec: Path, samples: int, starts: int, seed: int = 0
) -> dict[str, Any]:
    net = import_network(load_model(original))
    model = onnx.load(str(gated))
    rng = np.random.default_rng(seed)
    counts = {"samples": 0, "pgd_points": 0, "unsafe_original": 0, "unsafe_gated": 0}
    counts.update(pgd_unsafe_original=0, pgd_unsafe_gated=0)
    for case in read_vnnlib(spec).cases:
        for start in range(0, samples, CHUNK):
            x = case.box.sample(min(CHUNK, samples - start), rng)
            counts["samples"] += len(x)
            counts["unsafe_original"] += _unsafe(str(original), net, case, x)
            counts["unsafe_gated"] += _unsafe(model, net, case, x)
        for poly in case.unsafe:
            x = pgd_endpoints(net, case, poly, rng, starts)
            counts["pgd_points"] += len(x)
            counts["pgd_unsafe_original"] += _unsafe(str(original), net, case, x)
            counts["pgd_unsafe_gated"] += _unsafe(model, net, case, x)
    return counts


def _timed(sess: Any, feed: dict[str, np.ndarray], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        sess.run(None, feed)
    return (time.perf_counter() - start) / calls


def _pair(
    ungated: onnx.ModelProto, gated: onnx.ModelProto, batch: int, rounds: int, calls: int
) -> dict[str, float]:
    sessions = [session(ungated), session(gated)]
    inp = sessions[0].get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    shape[0] = batch
    x = np.random.default_rng(0).uniform(-0.5, 0.5, shape).astype(np.float32)
    feed = {inp.name: x}
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            times[i].append(_timed(sessions[i], feed, calls))
    plain, gates = (float(np.median(t)) for t in times)
    return {"ungated_us": plain * 1e6, "gated_us": gates * 1e6, "ratio": gates / plain}


def latency(gated_path: Path, rounds: int = 15) -> dict[str, Any]:
    gated = onnx.load(str(gated_path))
    ungated = strip_gates(gated)
    result: dict[str, Any] = {
        "gate_nodes": len(gate_part(gated)[0]) + len(clamp_part(gated)[0]),
        "core_nodes": len(ungated.graph.node),
    }
    result["batch1"] = _pair(ungated, gated, 1, rounds, 2000)
    wide_g, wide_u = symbolic_batch(gated), symbolic_batch(ungated)
    if wide_g is not None and wide_u is not None:
        result["batch1024"] = _pair(wide_u, wide_g, 1024, rounds, 40)
    return result
