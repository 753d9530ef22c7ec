"""Run the reference verifier (Marabou, via maraboupy) on one VNN-LIB instance.

Runs in the reference venv made by ``setup.sh``; it imports neither relugate
nor anything outside that venv.  Marabou reads the ONNX file with its own
parser and the VNN-LIB file with its own C++ ``VnnLibParser`` (input box plus
linear output constraints, conjunctions and ``(or (and ...))`` disjunctions).

    python run_reference.py --model M.onnx --spec S.vnnlib --timeout 20

prints exactly one JSON line on stdout::

    {"verdict": "holds"|"violated"|"unknown", "seconds": float, "method": str, ...}

VNN-LIB semantics: the asserts describe the unsafe set, so Marabou's ``unsat``
means the property holds and ``sat`` means it is violated.  On ``sat`` the
counterexample's input is fed to onnxruntime and the largest difference from
Marabou's output values is reported as ``cex_output_error``; the
input and output values themselves as ``counterexample``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import numpy as np

VERDICTS = {"unsat": "holds", "sat": "violated"}


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (Marabou's C++ printf too) to stderr."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def counterexample(net: Any, vals: dict[int, float]) -> dict[str, list[float]]:
    """Marabou's satisfying assignment, flattened: the input and the output values."""
    flat = [np.asarray(v).ravel() for v in (*net.inputVars, *net.outputVars)]
    n_in = sum(a.size for a in flat[: len(net.inputVars)])
    values = [vals[int(v)] for a in flat for v in a]
    return {"input": values[:n_in], "output": values[n_in:]}


def output_error(net: Any, model: str, vals: dict[int, float]) -> float:
    """Max |Marabou output - onnxruntime output| at Marabou's counterexample input."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feed = {}
    for meta, var_ids in zip(session.get_inputs(), net.inputVars, strict=True):
        ids = np.asarray(var_ids)
        feed[meta.name] = np.vectorize(lambda v: vals[int(v)])(ids).astype(np.float32)
    got = session.run(None, feed)
    err = 0.0
    for out, var_ids in zip(got, net.outputVars, strict=True):
        ids = np.asarray(var_ids)
        claimed = np.vectorize(lambda v: vals[int(v)])(ids)
        err = max(err, float(np.max(np.abs(out.reshape(ids.shape) - claimed))))
    return err


def run(model: str, spec: str, timeout: float, workers: int) -> dict[str, Any]:
    """Decide one instance; never raises (errors become verdict 'unknown')."""
    start = time.perf_counter()
    method = f"marabou {version('maraboupy')}" + (f" snc x{workers}" if workers > 1 else "")
    row: dict[str, Any] = {"verdict": "unknown", "method": method}
    try:
        from maraboupy import Marabou

        with stdout_to_stderr():
            net = Marabou.read_onnx(model)
            left = max(1, math.ceil(timeout - (time.perf_counter() - start)))
            options = Marabou.createOptions(
                timeoutInSeconds=left,
                verbosity=0,
                snc=workers > 1,
                numWorkers=workers,
            )
            status, vals, _stats = net.solve(verbose=False, options=options, propertyFilename=spec)
        row["status"] = status
    except Exception as exc:  # any failure of Marabou is an 'unknown'
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    row["seconds"] = time.perf_counter() - start
    row["verdict"] = VERDICTS.get(row["status"], "unknown")
    if row["status"] == "sat":
        row["counterexample"] = counterexample(net, vals)
        try:
            row["cex_output_error"] = output_error(net, model, vals)
        except Exception as exc:  # the check is informative only
            row["cex_output_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ONNX network")
    parser.add_argument("--spec", required=True, help="VNN-LIB property")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--workers", type=int, default=1, help=">1: Marabou split-and-conquer")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.model, args.spec, args.timeout, args.workers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
