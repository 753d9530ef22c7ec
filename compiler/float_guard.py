"""The float32 guard: a pass whose rewrite is exact in real arithmetic but not in float32
is undone when its rounding would break the compile's equivalence check.

Folding ``(x - m) / s`` into ``W`` gives ``W' x + b'`` with ``b' = b - W m / s``:
equal over the reals, but on a domain far from the normalization's centre the two
terms are large and cancel, and float32 loses digits the original kept (the shipped
example on ``[0, 1]`` inputs: 1.7e-5 after ``fold_scale``, past the 1e-5 tolerance
of the final check).  The same holds for merged Dense pairs and for the active
layers ``stable_relu`` folds.  After each pass that changed the network, the guard
runs it and the ORIGINAL model file in onnxruntime on the final check's inputs
(domain centre, corners and the same samples) and keeps the pass only if the error stays
below half the tolerance, leaving the other half to the passes after it and to
the final check; otherwise the network before the pass goes on, and the report
says why.  The bounds passes prove things about the network they get, so undoing
a pass is always sound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from relugate.compiler.domain import Box
from relugate.compiler.network import Network
from relugate.compiler.onnx_run import TOLERANCE, mismatch, run_batch, run_network

GUARD_LIMIT = TOLERANCE / 2


@dataclass
class FloatGuard:
    original_path: str  # the model file as given: what the final check compares with
    original: Network
    domain: Box
    samples: int = 64
    seed: int = 1
    limit: float = GUARD_LIMIT
    _inputs: np.ndarray | None = field(default=None, repr=False)
    _reference: np.ndarray | None = field(default=None, repr=False)

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The inputs (domain centre, corners, samples) and the original model file's
        outputs on them in onnxruntime: computed once, for the guard and the final check."""
        if self._inputs is None or self._reference is None:
            rng = np.random.default_rng(self.seed)
            box = self.domain
            points = np.concatenate([box.corners_and_center(), box.sample(self.samples, rng)])
            self._inputs = points.astype(np.float32)
            self._reference = run_batch(self.original_path, self.original.input, self._inputs)
        return self._inputs, self._reference

    def error(self, candidate: Network) -> float:
        """Worst error of ``candidate`` against the original on the guard's inputs."""
        inputs, reference = self.reference()
        return float(mismatch(reference, run_network(candidate, inputs)).max())

    def reason(self, error: float) -> str:
        return (
            f"undone: in float32 the rewritten network differs from the original by "
            f"{error:.3g} on the domain (guard limit {self.limit:.3g}, half the "
            f"equivalence tolerance {TOLERANCE})"
        )
