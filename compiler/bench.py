"""``relugate bench``: the bundle against the original, side by side in one run.

Three engines on the same inputs (uniform in the bundle's domain), one thread,
interleaved rounds (the machine's other work hits each alike): the original
model in onnxruntime, the original compiled by TVM (untuned, symbolic batch),
and the bundle through ``relugate.runtime`` (checks and gate telemetry
included).  Per engine and batch size: the minimum over rounds of the mean
time per call, rows per second, and the ratio to onnxruntime on the original.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("onnxruntime original", "TVM original", "bundle")
ROUND_SECONDS = 0.2


def _rounds(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    calls = {}
    for name, fn in fns.items():  # warm up, and size each round to about ROUND_SECONDS
        fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(ROUND_SECONDS / max(time.perf_counter() - start, 1e-7)))
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def _inputs(model: Any, batch: int, rng: np.random.Generator) -> np.ndarray:
    size = int(np.prod(model.sample_shape))
    if model.domain is None:
        x = rng.standard_normal((batch, size))
    else:
        lo, hi = (np.asarray(b, dtype=np.float64).reshape(-1) for b in model.domain)
        x = lo + rng.random((batch, size)) * (hi - lo)
    return x.astype(np.float32).reshape(batch, *model.sample_shape)


def _engines(
    sess: Any, name: str, tvm: Any, model: Any, x: np.ndarray
) -> dict[str, Callable[[], Any]]:
    return {
        ENGINES[0]: lambda: sess.run(None, {name: x}),
        ENGINES[1]: lambda: tvm.run(x),
        ENGINES[2]: lambda: model.run(x),
    }


def bench(
    bundle: Path, original: Path, batches: list[int], rounds: int = 5
) -> list[dict[str, Any]]:
    """Per batch size, each engine's microseconds per call, rows per second and ratio."""
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import onnx

    import relugate.runtime as rt
    from relugate.compiler.backends.tvm import lower, prepare
    from relugate.compiler.onnx_run import session

    model = rt.load(bundle)
    source = onnx.load(str(original))
    batched, specs = prepare(source, None, counts=False)
    sess, name = session(batched), specs[0].name
    tvm_original = lower(source, "llvm").load()
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x = _inputs(model, batch, rng)
        seconds = _rounds(_engines(sess, name, tvm_original, model, x), rounds)
        base = seconds[ENGINES[0]]
        for engine, s in seconds.items():
            rows.append(
                {
                    "engine": engine,
                    "batch": batch,
                    "us_per_call": round(s * 1e6, 2),
                    "rows_per_second": round(batch / s, 1),
                    "ratio_to_onnxruntime": round(s / base, 3),
                }
            )
    return rows
