"""The pipeline's instruments: pass timing, IR dumps, equivalence checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from relugate.compiler.domain import Box
from relugate.compiler.errors import EquivalenceError
from relugate.compiler.exporter import to_onnx
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_network
from relugate.compiler.pipeline import Instrument, dump_path
from relugate.passes.base import Pass, PassResult


@dataclass
class DumpIR(Instrument):
    """Write the network as ONNX before the first pass and after every pass."""

    folder: Path
    written: list[Path] = field(default_factory=list)

    def start(self, net: Network) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(dump_path(self.folder, 0, "import"), net)

    def after_pass(self, index: int, p: Pass, before: Network, result: PassResult) -> None:
        self._write(dump_path(self.folder, index, p.name), result.network)

    def _write(self, path: Path, net: Network) -> None:
        onnx.save(to_onnx(net), str(path))
        self.written.append(path)


def default_box(net: Network) -> Box:
    """Without a spec, equivalence is checked on [-1, 1] in every input."""
    return Box(-np.ones(net.input.size), np.ones(net.input.size))


@dataclass
class VerifyEach(Instrument):
    """After every pass that changed the network, compare it with its predecessor in
    onnxruntime on inputs sampled from the domain (plus its center and corners)."""

    domain: Box | None
    samples: int = 256
    seed: int = 0
    max_error: dict[str, float] = field(default_factory=dict)
    _inputs: np.ndarray | None = field(default=None, repr=False)

    def start(self, net: Network) -> None:
        box = self.domain or default_box(net)
        rng = np.random.default_rng(self.seed)
        points = np.concatenate([box.corners_and_center(), box.sample(self.samples, rng)])
        self._inputs = points.astype(np.float32)

    def after_pass(self, index: int, p: Pass, before: Network, result: PassResult) -> None:
        if not result.changed:
            return
        assert self._inputs is not None
        reference = run_network(before, self._inputs)
        candidate = run_network(result.network, self._inputs)
        error = mismatch(reference, candidate)
        worst = float(error.max())
        self.max_error[p.name] = worst
        if worst > TOLERANCE:
            row = int(np.unravel_index(int(error.argmax()), error.shape)[0])
            raise EquivalenceError(
                f"--verify-each: pass {p.name!r} changed the outputs by {worst:.3g} (relative) "
                f"on input {self._inputs[row].tolist()}; tolerance {TOLERANCE}"
            )
