"""Hidden-layer gate step: choose a layer and a region, prove it, or refuse.

For each candidate cut of the compiled core (``compiler/hidden_onnx``; one given
layer, or all of them from the last hidden layer back): the float32-sound
CROWN box of the cut on every case box (hull over a grid of the box, as the
output ranges of ``insert_gates``, widened by ``RANGE_SLACK``), the hidden values
of sampled inputs (onnxruntime on the core, the cut as a second output), then
two candidate regions: the largest provable region of ``hidden_gate``'s family
(each attempt a ``verify_model`` run on the tail per case, ``hidden_proof``) and the
hull of the safe samples tightened per coordinate by the tail's CROWN bounds
(``hidden_tighten``).  The one keeping more safe samples (the other one if it
fails), widened toward ``R`` on the sides no search moved in (``widen_region``:
inputs beyond the design samples keep their values too), is proved again with
the full timeout per case, and that run is its proof.
Among the cuts that prove, the one keeping most original-safe samples inside
its region wins (ties: the later layer).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from relugate.compiler.domain import Box
from relugate.compiler.errors import ProofFailed
from relugate.compiler.fidelity import symbolic_batch
from relugate.compiler.frontend import load_model
from relugate.compiler.hidden_onnx import Cut, cuts, find_cut, probe_model, tail_model
from relugate.compiler.importer import import_network
from relugate.compiler.onnx_run import session
from relugate.compiler.spec import Property
from relugate.compiler.verify import float32_inside
from relugate.passes.analysis.attack import unsafe_margin
from relugate.passes.analysis.crown import crown_bounds
from relugate.passes.analysis.hidden_gate import (
    HiddenGate,
    Margin,
    Samples,
    design_region,
    float32_region,
    widen_region,
)
from relugate.passes.analysis.hidden_proof import Range, clip_box, prove_tail
from relugate.passes.analysis.hidden_tighten import tighten
from relugate.passes.analysis.steps import ReluStep, Step, steps_of
from relugate.passes.insert_gates import SPLIT_BATCH, SPLIT_MAX_DIM, SPLIT_PIECES, grid, widen

DESIGN_SAMPLES = 2000
"""Sampled inputs per case for the region design."""
ATTEMPT_TIMEOUT = 5.0
"""Seconds of ``verify_model`` per case for one region tried (the chosen one is proved
again with the compile's full timeout)."""


def relu_step(steps: Sequence[Step], core: onnx.ModelProto, cut: Cut) -> int:
    """The analysis step of the cut's ReLU (the n-th Relu node is the n-th ReLU step)."""
    relus = [k for k, s in enumerate(steps) if isinstance(s, ReluStep)]
    nodes = [i for i, n in enumerate(core.graph.node) if n.op_type == "Relu"]
    if len(relus) != len(nodes):
        raise ProofFailed(
            f"no hidden gate: the core has {len(nodes)} Relu nodes but its analysis "
            f"{len(relus)} ReLU steps"
        )
    return relus[nodes.index(cut.node)]


def cut_range(steps: Sequence[Step], k: int, lo: np.ndarray, hi: np.ndarray) -> Range:
    """Hull of CROWN bounds on the output of ReLU step ``k`` over a grid of the box."""
    box = Box(lo, hi)
    g_lo, g_hi = grid(box, SPLIT_PIECES if box.dim <= SPLIT_MAX_DIM else 1)
    h_lo, h_hi = [], []
    for start in range(0, len(g_lo), SPLIT_BATCH):
        bounds = crown_bounds(
            steps[: k + 1], g_lo[start : start + SPLIT_BATCH], g_hi[start : start + SPLIT_BATCH]
        )
        h_lo.append(bounds.lo[k + 1].min(axis=0))
        h_hi.append(bounds.hi[k + 1].max(axis=0))
    return np.min(h_lo, axis=0), np.max(h_hi, axis=0)


def reach_boxes(
    core_path: Path, core: onnx.ModelProto, cut: Cut, props: Sequence[Property], slack: bool
) -> list[list[Range]]:
    """Per property and case: bounds of the cut tensor on the case box."""
    steps = steps_of(import_network(load_model(core_path)))
    k = relu_step(steps, core, cut)
    out = []
    for prop in props:
        per_case = [cut_range(steps, k, c.box.lo, c.box.hi) for c in prop.cases]
        out.append([widen(lo, hi) if slack else (lo, hi) for lo, hi in per_case])
    return out


def _runner(model: onnx.ModelProto, outputs: list[str]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Run ``model`` on batches (at once where its batch axis allows), these outputs."""
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    batched = model if first.HasField("dim_param") else symbolic_batch(model)
    sess = session(batched if batched is not None else model)
    name = sess.get_inputs()[0].name
    shape = sess.get_inputs()[0].shape

    def run(x: np.ndarray) -> list[np.ndarray]:
        x = x.astype(np.float32)
        if batched is not None:
            feed = x.reshape(len(x), *shape[1:])
            return [np.asarray(o).reshape(len(x), -1) for o in sess.run(outputs, {name: feed})]
        rows = [sess.run(outputs, {name: r.reshape(shape)}) for r in x]
        return [np.stack([np.asarray(r[i]).reshape(-1) for r in rows]) for i in range(len(outputs))]

    return run


def hidden_samples(
    core: onnx.ModelProto, cut: Cut, props: Sequence[Property], n: int, seed: int
) -> Samples:
    """Hidden values of ``n`` uniform samples per case; safe: the core's output is safe."""
    out = core.graph.output[0].name
    run = _runner(probe_model(core, cut), [out, cut.tensor])
    rng = np.random.default_rng(seed)
    hidden, safe = [], []
    for prop in props:
        for case in prop.cases:
            x = float32_inside(case.box.sample(n, rng), case.box)
            y, h = run(x)
            hidden.append(h.astype(np.float64))
            safe.append(~case.is_unsafe(y.astype(np.float64)))
    return Samples(np.concatenate(hidden), np.concatenate(safe))


def tail_margin(tail: onnx.ModelProto, props: Sequence[Property]) -> Margin:
    """Safety margin of the tail's output, the worst over every unsafe set of every case."""
    run = _runner(tail, [tail.graph.output[0].name])
    polys = [p for prop in props for case in prop.cases for p in case.unsafe]

    def margin(h: np.ndarray) -> np.ndarray:
        y = run(h)[0].astype(np.float64)
        return np.min([unsafe_margin(y, p) for p in polys], axis=0)

    return margin


def _gate_at(
    core_path: Path,
    core: onnx.ModelProto,
    cut: Cut,
    props: Sequence[Property],
    timeout: float,
) -> HiddenGate | None:
    reach = reach_boxes(core_path, core, cut, props, slack=True)
    samples = hidden_samples(core, cut, props, DESIGN_SAMPLES, seed=1)
    lo = np.min([r[0] for per in reach for r in per], axis=0)
    hi = np.max([r[1] for per in reach for r in per], axis=0)
    if np.any(samples.hidden < lo) or np.any(samples.hidden > hi):
        raise ProofFailed(f"internal: hidden values at layer {cut.index} leave their CROWN bounds")
    tail = tail_model(core, cut)
    attempt = min(ATTEMPT_TIMEOUT, timeout)

    def provable(region: Range) -> bool:
        boxes = [[clip_box(r, *region) for r in per] for per in reach]
        return all(p.proved for p in prove_tail(tail, boxes, props, attempt))

    start = time.perf_counter()
    found = design_region(samples, (lo, hi), provable, tail_margin(tail, props))
    candidates = [found] if found is not None else []
    tightened = _tightened(tail, props, samples)
    if tightened is not None:
        candidates.append(
            (tightened, {"method": "tighten", "safe_inside": samples.inside(tightened)})
        )
    candidates.sort(key=lambda c: -1.0 if c[1]["safe_inside"] is None else c[1]["safe_inside"])
    for found_region, info in reversed(candidates):  # the most safe samples inside first
        region, info["widened"] = widen_region(found_region, samples, (lo, hi), provable)
        boxes = [[clip_box(r, *region) for r in per] for per in reach]
        proofs = prove_tail(tail, boxes, props, timeout, stop_early=False)
        if all(p.proved for p in proofs):
            info["seconds"] = round(time.perf_counter() - start, 3)
            info["candidates"] = [c[1]["safe_inside"] for c in candidates]
            lo_h, hi_h = region
            return HiddenGate(cut.index, cut.tensor, cut.shape, lo_h, hi_h, reach, proofs, info)
    return None


def _tightened(tail: onnx.ModelProto, props: Sequence[Property], samples: Samples) -> Range | None:
    """``hidden_tighten`` from the hull of the safe samples (None: none, or no proof)."""
    safe = samples.hidden[samples.safe]
    if not len(safe):
        return None
    with tempfile.TemporaryDirectory(prefix="relugate-tail-") as tmp:
        path = Path(tmp) / "tail.onnx"
        onnx.save(tail, str(path))
        steps = steps_of(import_network(load_model(path)))
    polys = [p for prop in props for case in prop.cases for p in case.unsafe]
    region = tighten(steps, polys, safe, (safe.min(axis=0), safe.max(axis=0)))
    return None if region is None else float32_region(*region)


def _score(gate: HiddenGate) -> tuple[float, int]:
    inside = gate.design.get("safe_inside")
    return (-1.0 if inside is None else inside, gate.layer)


def design_hidden(
    core_path: Path,
    core: onnx.ModelProto,
    props: Sequence[Property],
    layer: int | None,
    timeout: float,
) -> HiddenGate:
    """The proved hidden gate at ``layer`` (None: the best cut); ProofFailed if none proves."""
    candidates = [find_cut(core, layer)] if layer is not None else cuts(core)[::-1]
    if not candidates:
        raise ProofFailed("no hidden gate: the network has no hidden ReLU layer to clamp")
    gates = [g for cut in candidates if (g := _gate_at(core_path, core, cut, props, timeout))]
    if not gates:
        where = f"layer {layer}" if layer is not None else f"any of {len(candidates)} layers"
        raise ProofFailed(
            f"no hidden gate at {where}: no region around the original-safe hidden values "
            "(not even one safe point) was proved for the tail network; nothing was written"
        )
    return max(gates, key=_score)
