"""Fidelity of a gated model: how often it agrees with the original.

On uniform samples of each case box (float32 values inside the box), both
models run in onnxruntime; per property: the fraction with the same argmax (and
argmin: ACAS Xu advises the minimal score) and the fraction whose outputs agree
within ``1e-5 * max(1, |y|)`` everywhere, over all samples and over those where
the original is safe (None when there are none).  The gated outputs are
also checked against the unsafe sets: the proof says none can be unsafe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.errors import EquivalenceError, RelugateError
from relugate.compiler.network import TensorSpec
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_batch
from relugate.compiler.spec import Property
from relugate.compiler.verify import float32_inside

SAMPLES = 10_000


def symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose input and output take any batch size, or None if the graph is tied to 1."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name for i in copy.graph.initializer}
    values = [v for v in copy.graph.input if v.name not in inits] + list(copy.graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if len(dims) < 2 or dims[0].dim_value != 1:
            return None
        dims[0].Clear()
        dims[0].dim_param = "N"
    del copy.graph.value_info[:]
    try:
        x = np.zeros((2, *[d.dim_value for d in values[0].type.tensor_type.shape.dim[1:]]))
        spec = TensorSpec(values[0].name, tuple(x.shape), True, "N")
        run_batch(copy, spec, x.astype(np.float32))
    except (RelugateError, Exception):  # onnxruntime raises its own types for shape errors
        return None
    return copy


def run_any(model: onnx.ModelProto | str, spec: TensorSpec, x: np.ndarray) -> np.ndarray:
    """Outputs ``(n, -1)``: at once when the graph allows any batch size, else row by row."""
    proto = onnx.load(model) if isinstance(model, str) else model
    batched = symbolic_batch(proto)
    if batched is not None:
        shape = (len(x), *spec.sample_shape) if spec.has_batch else (len(x), *spec.shape)
        wide = TensorSpec(spec.name, shape, True, "N")
        return run_batch(batched, wide, x)
    return run_batch(proto, spec, x)


def _rates(original: np.ndarray, gated: np.ndarray) -> tuple[float | None, ...]:
    """Fractions with the same argmax, the same argmin, all outputs close (None: no rows)."""
    if len(original) == 0:
        return None, None, None
    same = np.argmax(original, axis=1) == np.argmax(gated, axis=1)
    same_min = np.argmin(original, axis=1) == np.argmin(gated, axis=1)
    close = mismatch(original, gated).max(axis=1) <= TOLERANCE
    return float(same.mean()), float(same_min.mean()), float(close.mean())


def property_fidelity(
    original: Path,
    gated: onnx.ModelProto,
    spec: TensorSpec,
    prop: Property,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    y0s, y1s, safe = [], [], []
    unsafe_gated = 0
    for case in prop.cases:
        x = float32_inside(case.box.sample(samples, rng), case.box)
        y0 = run_any(str(original), spec, x).astype(np.float64)
        y1 = run_any(gated, spec, x).astype(np.float64)
        unsafe_gated += int(case.is_unsafe(y1).sum())
        y0s.append(y0)
        y1s.append(y1)
        safe.append(~case.is_unsafe(y0))
    y0, y1, ok = np.concatenate(y0s), np.concatenate(y1s), np.concatenate(safe)
    same, same_min, close = _rates(y0, y1)
    safe_same, safe_min, safe_close = _rates(y0[ok], y1[ok])
    if unsafe_gated:
        raise EquivalenceError(
            f"internal error: {unsafe_gated} sampled outputs of the gated model are unsafe for "
            f"{prop.source} although the gates were proved; nothing was written"
        )
    return {
        "source": prop.source,
        "samples": len(y0),
        "same_argmax": same,
        "same_argmin": same_min,  # the advisory of ACAS Xu is the minimal score
        "close": close,
        "original_safe_samples": int(ok.sum()),
        "safe_same_argmax": safe_same,
        "safe_same_argmin": safe_min,
        "safe_close": safe_close,
        "unsafe_gated": unsafe_gated,
    }


def fidelity(
    original: Path,
    gated: onnx.ModelProto,
    spec: TensorSpec,
    props: Sequence[Property],
    samples: int = SAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per property, agreement of ``gated`` with the ``original`` file (see the module doc)."""
    return [
        property_fidelity(original, gated, spec, p, samples, seed + i) for i, p in enumerate(props)
    ]
