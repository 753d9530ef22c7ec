"""``characterize_model``: load a model and its property, split the input box into
safe / unsafe / undecided boxes within a time budget, find activation patterns
that imply the property, and write ``regions.json`` (atomically, every few
seconds while it runs, so an interrupted run can ``resume``).

Counterexamples are confirmed by running the original file in onnxruntime on
the float32 input (one session for the whole run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from relugate.compiler.certificate import sha256_file
from relugate.compiler.compile import load_properties
from relugate.compiler.errors import BadSpec, BundleError
from relugate.compiler.frontend import load_model
from relugate.compiler.importer import import_network
from relugate.compiler.network import TensorSpec
from relugate.compiler.onnx_run import session
from relugate.compiler.regions_file import read, resume_leaves, to_json, write_atomic
from relugate.passes.analysis.characterize import METHODS, Characterization, characterize, start
from relugate.passes.analysis.characterize_patterns import find_patterns
from relugate.passes.analysis.steps import steps_of

MAX_FREE_INPUTS = 16
"""Input splitting is hopeless beyond this many inputs of nonzero width."""
CHECKPOINT_SECONDS = 5.0
WRITE_COST_FACTOR = 10.0
"""A checkpoint waits at least this many times as long as the last one took to write."""


class OrtValidator:
    """Outputs of the original file in onnxruntime for float32 inputs (k, n)."""

    def __init__(self, path: Path, spec: TensorSpec) -> None:
        self.sess = session(str(path))
        self.inp = self.sess.get_inputs()[0]
        self.spec = spec
        self.batched = spec.has_batch and not isinstance(self.inp.shape[0], int)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape((-1, *self.spec.sample_shape))
        if self.batched:
            y = self.sess.run(None, {self.inp.name: x})[0]
            return np.asarray(y, np.float64).reshape(len(x), -1)
        rows = [self.sess.run(None, {self.inp.name: r.reshape(self.spec.shape)})[0] for r in x]
        return np.stack([np.asarray(r, np.float64).reshape(-1) for r in rows])


def characterize_model(
    model: Path,
    spec: Path,
    output: Path | None,
    timeout: float = 60.0,
    pattern_timeout: float = 20.0,
    method: str = "crown",
    resume: bool = False,
    on_round: Callable[[Characterization], None] | None = None,
    seed: int = 0,
) -> tuple[Characterization, dict[str, Any]]:
    """Characterize ``model`` on ``spec``; returns the partition and what was written."""
    if method not in METHODS:
        raise BadSpec(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    loaded = load_model(model)
    net = import_network(loaded)
    prop = load_properties([spec], net)[0]
    for case in prop.cases:
        free = int((case.box.width > 0).sum())
        if free > MAX_FREE_INPUTS:
            raise BadSpec(
                f"{spec}: characterize splits the input box; it handles at most "
                f"{MAX_FREE_INPUTS} inputs of nonzero width, this box has {free}"
            )
    steps = steps_of(net)
    header = {
        "model": {"path": str(Path(model).absolute()), "sha256": loaded.sha256},
        "spec": {"path": str(Path(spec).absolute()), "sha256": sha256_file(Path(spec))},
    }
    state = start(prop, steps, method)
    if resume and output is not None and output.exists():
        data = read(output)
        for key in ("model", "spec"):
            if data.get(key, {}).get("sha256") != header[key]["sha256"]:
                raise BadSpec(f"{output} was written for another {key}; cannot resume it")
        if data.get("method") != method:
            raise BadSpec(f"{output} was written with --method {data.get('method')}")
        resume_leaves(data, state, output)
    if output is not None:  # fail now, not at the first checkpoint
        try:
            output.absolute().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot write {output}: {exc.strerror or exc}") from exc
    validate = OrtValidator(loaded.path, net.input)
    last = [time.monotonic(), 0.0]  # time of the last checkpoint, seconds it took

    def each_round(s: Characterization) -> None:
        if on_round is not None:
            on_round(s)
        now = time.monotonic()
        wait = max(CHECKPOINT_SECONDS, WRITE_COST_FACTOR * last[1])
        if output is not None and now - last[0] >= wait:
            write_atomic(output, to_json(s, header, {}))
            last[:] = [time.monotonic(), time.monotonic() - now]  # big files: write less often

    characterize(net, steps, state, validate, time.monotonic() + timeout, on_round=each_round)
    patterns: dict[str, Any] = {}
    if method != "interval" and pattern_timeout > 0:
        deadline = time.monotonic() + pattern_timeout
        patterns = find_patterns(steps, state, deadline, np.random.default_rng(seed))
    data = to_json(state, header, patterns)
    if output is not None:
        write_atomic(output, data)
    return state, data
